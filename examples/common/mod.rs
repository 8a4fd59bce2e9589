//! Shared by the examples: byte counts for people.

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// `1.5 MiB`, `12.0 KiB`, `100 B`.
pub fn human(bytes: u64) -> String {
    if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else if bytes >= KIB {
        format!("{:.1} KiB", bytes as f64 / KIB as f64)
    } else {
        format!("{bytes} B")
    }
}
