//! YAML text → merged, validated config. Whatever the input: no panic, and a config that is
//! accepted prints (`xca config`) to YAML that reads back to the same config.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xca::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.yaml");
    if let Ok(loaded) = Config::from_yaml_str(text, path) {
        let yaml = loaded.config.to_yaml();
        let again = Config::from_yaml_str(&yaml, path).expect("a printed config must read back");
        assert_eq!(
            again.config.to_json(),
            loaded.config.to_json(),
            "round trip changed the config"
        );
    }
});
