//! ponte proxy.
