//! Shared helpers for the integration tests: find the plainvm binary and guest artifacts, run VMs.
