//! Booting: the test guest, SMP, Linux, and refusals of bad input.
