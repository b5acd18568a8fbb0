//! The file provider's parser on arbitrary bytes: YAML documents (and JSON
//! objects) into typed Kubernetes objects and the Snapshot. Bad input is an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_controller::file::parse_documents;
use portcullis_controller::{KubeObject, Snapshot};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut snapshot = Snapshot::default();
    if let Ok(objects) = parse_documents(text) {
        for object in objects {
            let _ = object.display_name();
            let _ = snapshot.insert(object);
        }
    }
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        if let Ok(object) = KubeObject::from_value(value) {
            let _ = snapshot.insert(object);
        }
    }
});
