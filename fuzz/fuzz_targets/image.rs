//! Image decoding on arbitrary bytes, as `POST /predict` runs it: the header check that
//! decides where to decode, then the decoder with its limits. Nothing may panic, a decoded
//! image is always 28x28, and an image whose header is over the limits never decodes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trainyard_fuzz::data::image::{ImageError, declared_dimensions, decode_to_28x28};

fuzz_target!(|data: &[u8]| {
    let header = declared_dimensions(data);
    let decoded = decode_to_28x28(data);
    if let Ok(px) = &decoded {
        assert_eq!(px.len(), 28 * 28);
    }
    if let Err(ImageError::TooLarge(_)) = header {
        assert!(decoded.is_err(), "a header over the limits decoded");
    }
});
