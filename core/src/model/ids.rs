//! Identifiers: account ids and transaction ids.
//!
//! Both are short opaque strings chosen by clients. They are stored inline (no heap
//! allocation) so that ledger tables stay compact and copying a key is a memcpy.

use std::fmt;
use std::hash::{Hash, Hasher};

/// Longest identifier accepted, in bytes.
pub const ID_LEN_MAX: usize = 64;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {ID_LEN_MAX} bytes")]
    TooLong { kind: &'static str },
    #[error("{kind} may only contain ASCII letters, digits and . _ : -")]
    BadCharacter { kind: &'static str },
}

/// Inline bytes of a validated identifier: ASCII `[A-Za-z0-9._:-]`, 1 to 64 bytes.
///
/// The bytes past `len` are zero (`parse` is the only constructor). Equality can therefore
/// compare whole arrays, which compiles to a few vector compares instead of a `memcmp` call,
/// and ordering the zero-padded arrays is ordering the ids, since zero sorts before every
/// allowed character.
#[derive(Clone, Copy)]
struct InlineId {
    len: u8,
    bytes: [u8; ID_LEN_MAX],
}

impl InlineId {
    fn parse(text: &str, kind: &'static str) -> Result<InlineId, IdError> {
        if text.is_empty() {
            return Err(IdError::Empty { kind });
        }
        if text.len() > ID_LEN_MAX {
            return Err(IdError::TooLong { kind });
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
        if !text.bytes().all(allowed) {
            return Err(IdError::BadCharacter { kind });
        }
        let mut bytes = [0u8; ID_LEN_MAX];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Ok(InlineId {
            len: text.len() as u8,
            bytes,
        })
    }

    fn as_str(&self) -> &str {
        // Only validated ASCII ever enters `bytes`.
        std::str::from_utf8(self.as_bytes()).expect("ids are ASCII")
    }

    /// Appends the id as a length byte and its bytes: the encoding of ids in logs,
    /// snapshots and peer frames.
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.len);
        self.append_bytes_to(out);
    }

    /// Appends the id's bytes alone.
    fn append_bytes_to(&self, out: &mut Vec<u8>) {
        let end = out.len() + self.len as usize;
        // Copying the whole padded array is a few vector stores; copying exactly `len` bytes
        // is a call to memmove, which cost 5% of the one-partition engine's time.
        out.extend_from_slice(&self.bytes);
        out.truncate(end);
    }

    /// The id whose bytes `append_bytes_to` stored: they were validated on the way in.
    fn from_stored(stored: &[u8], kind: &'static str) -> InlineId {
        debug_assert_eq!(
            InlineId::parse(std::str::from_utf8(stored).unwrap_or("\n"), kind).map(|id| id.len),
            Ok(stored.len() as u8),
            "stored {kind} bytes are a valid id"
        );
        let mut bytes = [0u8; ID_LEN_MAX];
        bytes[..stored.len()].copy_from_slice(stored);
        InlineId {
            len: stored.len() as u8,
            bytes,
        }
    }

    /// The id's bytes. Comparisons and hashing use these rather than `as_str`, which would
    /// re-validate UTF-8 on the ledger's hottest path.
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl PartialEq for InlineId {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.bytes == other.bytes
    }
}
impl Eq for InlineId {}
impl Hash for InlineId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes())
    }
}
impl PartialOrd for InlineId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InlineId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // ASCII: byte order is text order. Eight bytes at a time, as big-endian words, so a
        // snapshot's sort of millions of ids rarely looks past the first word or two.
        for (a, b) in self.bytes.chunks_exact(8).zip(other.bytes.chunks_exact(8)) {
            let a = u64::from_be_bytes(a.try_into().expect("8 bytes"));
            let b = u64::from_be_bytes(b.try_into().expect("8 bytes"));
            if a != b {
                return a.cmp(&b);
            }
        }
        std::cmp::Ordering::Equal
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(InlineId);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn new(text: &str) -> Result<Self, IdError> {
                InlineId::parse(text, $kind).map($name)
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }

            /// The identifier's ASCII bytes (no UTF-8 check: for hot paths such as encoding).
            pub fn as_bytes(&self) -> &[u8] {
                self.0.as_bytes()
            }

            /// Appends the id as a length byte and its bytes (how every encoder writes ids).
            pub fn encode_into(&self, out: &mut Vec<u8>) {
                self.0.encode_into(out)
            }

            /// Appends the id's bytes without a length (for tables that keep lengths apart).
            pub(crate) fn append_bytes_to(&self, out: &mut Vec<u8>) {
                self.0.append_bytes_to(out)
            }

            /// The id of bytes that [`Self::append_bytes_to`] stored; they are not re-validated
            /// (debug builds check them).
            pub(crate) fn from_stored(stored: &[u8]) -> Self {
                $name(InlineId::from_stored(stored, $kind))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::new(text)
            }
        }
    };
}

id_type!(
    /// An account identifier chosen by the client (e.g. `"alice"`, `"acct:42"`).
    AccountId,
    "account id"
);
id_type!(
    /// A client-chosen idempotency key, unique per source account.
    TransactionId,
    "transaction id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_charset_and_length() {
        let id = AccountId::new("acct:42_a-b.c").unwrap();
        assert_eq!(id.as_str(), "acct:42_a-b.c");
        assert_eq!(format!("{id}"), "acct:42_a-b.c");
        assert!(AccountId::new(&"a".repeat(ID_LEN_MAX)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert_eq!(
            AccountId::new(""),
            Err(IdError::Empty { kind: "account id" })
        );
        assert_eq!(
            TransactionId::new(&"a".repeat(ID_LEN_MAX + 1)),
            Err(IdError::TooLong {
                kind: "transaction id"
            })
        );
        for bad in ["a b", "a/b", "é", "a\n", "a\0"] {
            assert!(
                matches!(AccountId::new(bad), Err(IdError::BadCharacter { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn equality_and_order_follow_the_text() {
        let a = AccountId::new("a").unwrap();
        let ab = AccountId::new("ab").unwrap();
        assert!(a < ab);
        assert_eq!(a, AccountId::new("a").unwrap());
        assert_ne!(a, ab);
    }

    proptest::proptest! {
        /// The word-wise comparison of padded arrays agrees with comparing the texts,
        /// including ids that are prefixes of each other or differ past the first word.
        #[test]
        fn comparisons_agree_with_the_text(
            a in "[a-c.:_-]{1,20}[A-Za-z0-9]{0,44}",
            b in "[a-c.:_-]{1,20}[A-Za-z0-9]{0,44}",
        ) {
            let (x, y) = (AccountId::new(&a).unwrap(), AccountId::new(&b).unwrap());
            proptest::prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            proptest::prop_assert_eq!(x == y, a == b);
            let prefix = AccountId::new(&a[..a.len().div_ceil(2)]).unwrap();
            proptest::prop_assert_eq!(prefix.cmp(&x), a[..a.len().div_ceil(2)].cmp(&a));
        }
    }
}
