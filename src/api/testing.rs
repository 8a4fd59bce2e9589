//! Hooks for tests.

/// `Some(k)`: the next k OS mappings succeed, then every mapping fails until
/// `os_fail_after(None)`.
pub fn os_fail_after(n: Option<u64>) {
    crate::platform::fail::set_fail_after(crate::platform::fail::Call::Map, n);
}

/// `Some(k)`: the next k `pthread_key_create` calls succeed, then every one fails until
/// `key_create_fail_after(None)`.
pub fn key_create_fail_after(n: Option<u64>) {
    crate::platform::fail::set_fail_after(crate::platform::fail::Call::KeyCreate, n);
}
