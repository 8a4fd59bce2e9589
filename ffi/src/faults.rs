//! `SCOPEALLOC_FAIL`: the core's failure hook from the environment, for tests of programs
//! linked with (or preloading) the C library. Compiled in only with the `fault-injection`
//! feature: the shipped library neither reads the variable nor can be made to fail this way.
//!
//! `SCOPEALLOC_FAIL=SPEC[,SPEC...]`, each SPEC one of
//! * `CALL:N` — the next N calls of that kind (counted from the constructor that reads the
//!   variable) succeed, every later one fails;
//! * `CALL:random:SEED:PERMILLE` — each call of that kind fails with probability
//!   PERMILLE / 1000, drawn from a generator seeded with SEED (shared by all kinds);
//!
//! where CALL is `mmap`, `munmap`, `madvise`, `key` (`pthread_key_create`) or, in
//! libscopealloc_secure.so, `mprotect` (its guard pages). Read by the
//! options constructor (`options::read_options`), without allocating; a SPEC that does not
//! parse gives one warning line on stderr and is ignored. Allocations made before the
//! constructor runs (other libraries' constructors) are never refused.

use scopealloc::testing::{fail_after, fail_randomly, OsCall};

/// Arms the hook as `SCOPEALLOC_FAIL` says.
pub fn arm_from_env(v: &[u8]) {
    for spec in v.split(|&b| b == b',') {
        match parse_spec(spec) {
            Some(Spec::After(call, n)) => fail_after(call, Some(n)),
            Some(Spec::Randomly(call, seed, permille)) => {
                fail_randomly(call, seed, permille * 1000)
            }
            None => crate::options::warn(
                b"SCOPEALLOC_FAIL",
                spec,
                b"expected mmap|munmap|madvise|key|mprotect, then :N or :random:SEED:PERMILLE",
                b"that call never refused",
            ),
        }
    }
}

/// One parsed SPEC.
#[derive(Debug, PartialEq, Eq)]
enum Spec {
    /// `CALL:N`.
    After(OsCall, u64),
    /// `CALL:random:SEED:PERMILLE`.
    Randomly(OsCall, u64, u32),
}

fn parse_call(name: &[u8]) -> Option<OsCall> {
    match name {
        b"mmap" => Some(OsCall::Map),
        b"munmap" => Some(OsCall::Unmap),
        b"madvise" => Some(OsCall::Purge),
        b"key" => Some(OsCall::KeyCreate),
        #[cfg(feature = "secure")]
        b"mprotect" => Some(OsCall::Protect),
        _ => None,
    }
}

fn parse_spec(spec: &[u8]) -> Option<Spec> {
    let mut parts = spec.split(|&b| b == b':');
    let call = parse_call(parts.next()?)?;
    let spec = match parts.next()? {
        b"random" => {
            let seed = crate::options::parse_u64(parts.next()?)?;
            let permille = crate::options::parse_u64(parts.next()?)?;
            if permille > 1000 {
                return None;
            }
            Spec::Randomly(call, seed, permille as u32)
        }
        n => Spec::After(call, crate::options::parse_u64(n)?),
    };
    parts.next().is_none().then_some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_a_call_and_a_countdown_or_a_seeded_chance() {
        assert_eq!(parse_spec(b"mmap:3"), Some(Spec::After(OsCall::Map, 3)));
        assert_eq!(parse_spec(b"munmap:0"), Some(Spec::After(OsCall::Unmap, 0)));
        assert_eq!(
            parse_spec(b"madvise:random:42:250"),
            Some(Spec::Randomly(OsCall::Purge, 42, 250))
        );
        assert_eq!(
            parse_spec(b"key:1"),
            Some(Spec::After(OsCall::KeyCreate, 1))
        );
        for bad in [
            &b""[..],
            b"mmap",
            b"mmap:",
            b"mmap:x",
            b"brk:3",
            b"mmap:3:4",
            b"mmap:random:1",
            b"mmap:random:1:1001",
            b"mmap:random:1:5:6",
        ] {
            assert_eq!(parse_spec(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
