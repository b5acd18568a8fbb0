package conformance

import (
	"os"
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

// TestConformance runs the official Gateway API conformance suite against the
// cluster in $KUBECONFIG. Flags come after -args (see ../scripts/conformance.sh):
// --gateway-class, --conformance-profiles, --supported-features,
// --report-output, --organization/--project/--url/--version/--contact.
func TestConformance(t *testing.T) {
	if os.Getenv("KUBECONFIG") == "" {
		t.Skip("KUBECONFIG is not set: run through e2e/scripts/conformance.sh on the e2e cluster")
	}
	conformance.RunConformanceWithOptions(t, conformance.DefaultOptions(t))
}
