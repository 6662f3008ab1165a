//! Fuzz target: any string a user may type as an NBD URL parses or fails
//! cleanly, and a parsed URL prints as a URL that parses back to itself
//! (`mgear` prints URLs in messages and passes them to `qemu-img`/`nbdinfo`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mgear_nbd::NbdUrl;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(url) = s.parse::<NbdUrl>() {
        let shown = url.to_string();
        let back: NbdUrl = shown
            .parse()
            .unwrap_or_else(|e| panic!("{s:?} printed as {shown:?}, which does not parse: {e}"));
        assert_eq!(back, url, "{s:?} printed as {shown:?}");
    }
});
