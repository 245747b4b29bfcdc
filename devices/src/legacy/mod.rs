//! Legacy PC devices on port I/O: the 16550 serial console, the i8042 reset line, POST codes, and
//! the eventfd trigger that raises their interrupts.

pub mod i8042;
pub mod post_code;
pub mod serial;
pub mod trigger;
