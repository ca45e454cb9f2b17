//! `meshgate_config::load_str`: arbitrary text as one configuration file, through the YAML
//! splitter, the strict per-kind parsers and the compiler.
//!
//! Checks: it never panics and stays under the run's memory cap (`-rss_limit_mb=2048`; YAML
//! aliases must not expand without bound); a refused configuration says why (at least one error,
//! each with a message, and every error displays); an accepted one serializes to JSON, as
//! `meshgate check` prints it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match meshgate_config::load_str("fuzz.yaml", &text) {
        Ok(model) => {
            serde_json::to_string(&model).expect("an accepted model serializes");
            for warning in &model.warnings {
                let _ = warning.to_string();
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "refused without an error");
            for error in &errors.0 {
                assert!(!error.message.is_empty(), "an error without a message");
            }
            let _ = errors.to_string();
        }
    }
});
