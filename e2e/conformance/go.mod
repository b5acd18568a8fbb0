// The Gateway API conformance suite runner (tests come with the controller),
// and the source of the conformance echo server and of the Gateway API CRDs:
// one Gateway API version for the suite, its backends and the CRDs.
module portcullis.dev/e2e/conformance

go 1.25.0

require (
	golang.org/x/net v0.49.0 // indirect
	golang.org/x/sys v0.40.0 // indirect
	golang.org/x/text v0.33.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20251029180050-ab9386a59fda // indirect
	google.golang.org/grpc v1.78.0 // indirect
	google.golang.org/protobuf v1.36.11 // indirect
	sigs.k8s.io/gateway-api/conformance v1.5.1 // indirect
)

tool sigs.k8s.io/gateway-api/conformance/echo-basic

// The conformance module refers to its parent at a pseudo-version that only
// works inside its own repository; pin it to the same release.
replace sigs.k8s.io/gateway-api => sigs.k8s.io/gateway-api v1.5.1
