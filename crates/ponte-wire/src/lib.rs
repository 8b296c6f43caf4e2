//! Ponte wire formats (no I/O).
