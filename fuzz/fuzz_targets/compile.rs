//! `compile()` on whatever objects the fuzzer writes (YAML or JSON, seeded
//! with real configurations): it must never panic, and what it produces
//! must be servable: every port's routes index, a lookup runs, the table
//! serializes (the /config_dump path).
#![no_main]

use std::sync::Arc;

use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use portcullis_dataplane::router::{PortRoutes, RequestParts};
use portcullis_fuzz::compile_yaml;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(table) = compile_yaml(text) else {
        return;
    };
    let _ = serde_json::to_string(&table);
    let table = Arc::new(table);
    let headers = HeaderMap::new();
    for index in 0..table.ports.len() {
        let routes = PortRoutes::new(table.clone(), index);
        for host in ["a.example", "www.example.com", "x"] {
            let _ = routes.lookup(&RequestParts {
                host,
                path: "/",
                query: None,
                method: &Method::GET,
                headers: &headers,
            });
        }
    }
});
