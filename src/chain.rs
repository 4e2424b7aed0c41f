//! The tamper-evident log: every event row carries `hash` = SHA-256 over the previous row's hash and
//! the event's identity, times and the SHA-256 of its payload (API.md, "Erasure, retention and the
//! tamper-evident log"). Because the payload enters only through its digest, an erasure that replaces
//! a payload by a stub naming the original digest keeps the chain intact.
//!
//! Pure code: the hash, the erasure stub's text, and [`Verifier`], the state machine `verify` runs
//! over the log in `seq` order. The store computes hashes in the append transaction with
//! [`event_hash`] and reads rows for the verifier.
//!
//! # The hash input (fixed: an auditor recomputes it from an export)
//!
//! ```text
//! prev_hash        32 bytes (32 zero bytes before the first event)
//! seq              8 bytes, big-endian signed
//! event_id         16 bytes (the UUID's bytes)
//! platform         4-byte big-endian length, then UTF-8
//! external_id      4-byte big-endian length, then UTF-8
//! kind             4-byte big-endian length, then UTF-8
//! occurred_at      8 bytes, big-endian signed microseconds since the epoch
//! received_at      8 bytes, big-endian signed microseconds since the epoch
//! payload_sha256   32 bytes: SHA-256 of the payload text as stored (for a stub: of the original)
//! ```
//!
//! Hashes and digests are written as lower-case hex.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// The hash the first event chains to.
pub const GENESIS: Sha256Digest = [0; 32];

/// The event kind recording an erasure (its payload is an [`ErasureRecord`]).
pub const ERASED_KIND: &str = "ledger.erased";

/// The fields of an event the chain covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLink<'a> {
    /// Position in the log.
    pub seq: i64,
    /// The event's id.
    pub event_id: Uuid,
    /// Platform, as stored.
    pub platform: &'a str,
    /// Stream id, as stored (`''` for an event filed under no stream).
    pub external_id: &'a str,
    /// Event kind.
    pub kind: &'a str,
    /// Microseconds since the epoch.
    pub occurred_at: i64,
    /// Microseconds since the epoch.
    pub received_at: i64,
    /// SHA-256 of the original payload text.
    pub payload_sha256: Sha256Digest,
}

/// SHA-256 of a payload text.
pub fn payload_sha256(payload: &str) -> Sha256Digest {
    Sha256::digest(payload.as_bytes()).into()
}

/// The hash of an event chained to `prev` (see the module documentation for the exact input).
pub fn event_hash(prev: &Sha256Digest, link: &ChainLink<'_>) -> Sha256Digest {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(link.seq.to_be_bytes());
    h.update(link.event_id.as_bytes());
    for text in [link.platform, link.external_id, link.kind] {
        // Lengths never exceed u32 in practice (bodies are capped far below 4 GiB); saturate anyway.
        let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
        h.update(len.to_be_bytes());
        h.update(text.as_bytes());
    }
    h.update(link.occurred_at.to_be_bytes());
    h.update(link.received_at.to_be_bytes());
    h.update(link.payload_sha256);
    h.finalize().into()
}

/// Lower-case hex of a digest.
pub fn to_hex(digest: &Sha256Digest) -> String {
    hex::encode(digest)
}

/// A digest from hex; None unless exactly 64 hex digits.
pub fn from_hex(text: &str) -> Option<Sha256Digest> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// The newest event of the log and its hash: what an auditor pins to prove later that nothing before
/// it changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChainHead {
    /// The newest event's seq.
    pub seq: i64,
    /// Its hash (hex SHA-256).
    pub hash: String,
}

/// What replaces an erased event's payload: `{"erased": true, "erasure_id", "payload_sha256"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureStub {
    /// Always true.
    pub erased: bool,
    /// The erasure that replaced the payload.
    pub erasure_id: Uuid,
    /// Hex SHA-256 of the original payload text.
    pub payload_sha256: String,
}

/// Every stub text starts with this (the field order is fixed), so most payloads are told apart
/// from stubs without parsing them.
const STUB_PREFIX: &str = "{\"erased\":true,";

impl ErasureStub {
    /// The stub for an original payload with digest `original`.
    pub fn new(erasure_id: Uuid, original: &Sha256Digest) -> Self {
        Self {
            erased: true,
            erasure_id,
            payload_sha256: to_hex(original),
        }
    }

    /// The exact text stored in place of the payload (compact JSON, fields in this order).
    pub fn to_payload(&self) -> String {
        format!(
            "{{\"erased\":true,\"erasure_id\":\"{}\",\"payload_sha256\":\"{}\"}}",
            self.erasure_id, self.payload_sha256
        )
    }

    /// The stub a stored payload text is, when it is one in exactly the form [`to_payload`](Self::to_payload) writes.
    pub fn parse(payload: &str) -> Option<ErasureStub> {
        if !payload.starts_with(STUB_PREFIX) {
            return None;
        }
        let stub: ErasureStub = serde_json::from_str(payload).ok()?;
        (stub.erased && stub.to_payload() == payload && from_hex(&stub.payload_sha256).is_some()).then_some(stub)
    }

    /// The original payload's digest.
    pub fn digest(&self) -> Option<Sha256Digest> {
        from_hex(&self.payload_sha256)
    }
}

/// One erased event in a certificate and in the `ledger.erased` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErasedEvent {
    /// The event's position in the log.
    pub seq: i64,
    /// Hex SHA-256 of its original payload (what the chain covers).
    pub payload_sha256: String,
}

/// The payload of a `ledger.erased` event: what an erasure did, without the personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureRecord {
    /// The erasure's id.
    pub erasure_id: Uuid,
    /// When it ran (RFC 3339).
    pub at: chrono::DateTime<chrono::Utc>,
    /// The conversations erased.
    pub conversation_ids: Vec<Uuid>,
    /// The events whose payloads it replaced by stubs.
    pub events: Vec<ErasedEvent>,
}

/// A row of the log as the verifier reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRow {
    /// `seq`.
    pub seq: i64,
    /// `event_id` as stored.
    pub event_id: String,
    /// `platform`.
    pub platform: String,
    /// `external_id`.
    pub external_id: String,
    /// `kind`.
    pub kind: String,
    /// `occurred_at`, micros.
    pub occurred_at: i64,
    /// `received_at`, micros.
    pub received_at: i64,
    /// `payload` text.
    pub payload: String,
    /// `hash` hex (None: never hashed).
    pub hash: Option<String>,
}

/// Why the chain is broken at a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakReason {
    /// A `seq` is missing (a row was deleted): the row holding the next one was found instead.
    Missing {
        /// The seq read instead.
        found: i64,
    },
    /// The row has no hash.
    Unhashed,
    /// The stored hash is not the hash of the row chained to its predecessor.
    Mismatch {
        /// The hash the row should carry.
        expected: String,
        /// The hash it carries.
        stored: String,
    },
    /// The row cannot be read as an event (bad id).
    Unreadable(String),
    /// A head pinned earlier lies beyond the end of the log (rows were removed from its end).
    Truncated {
        /// The last seq in the log.
        last: i64,
    },
    /// The row at a pinned head's seq no longer carries the pinned hash.
    PinMismatch {
        /// The hash pinned.
        pinned: String,
        /// The hash the row carries now.
        stored: String,
    },
    /// The payload is an erasure stub that no later `ledger.erased` event records.
    UnrecordedErasure {
        /// The erasure the stub names.
        erasure_id: Uuid,
    },
}

/// The first row at which the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// Its seq.
    pub seq: i64,
    /// What is wrong.
    pub reason: BreakReason,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = self.seq;
        match &self.reason {
            BreakReason::Missing { found } => write!(f, "seq {seq} is missing (the next row read is seq {found})"),
            BreakReason::Unhashed => write!(f, "seq {seq} has no hash"),
            BreakReason::Mismatch { expected, stored } => write!(
                f,
                "seq {seq} does not match its hash (stored {stored}, computed {expected}): the row was changed"
            ),
            BreakReason::Truncated { last } => {
                write!(f, "seq {seq} (the pinned head) is missing: the log ends at seq {last}")
            }
            BreakReason::PinMismatch { pinned, stored } => {
                write!(
                    f,
                    "seq {seq} carries hash {stored}, not the pinned {pinned}: the log was rewritten"
                )
            }
            BreakReason::Unreadable(why) => write!(f, "seq {seq} cannot be read: {why}"),
            BreakReason::UnrecordedErasure { erasure_id } => write!(
                f,
                "seq {seq} holds an erasure stub (erasure {erasure_id}) that no ledger.erased event records"
            ),
        }
    }
}

/// A row of the log as stored, borrowed from what the store read: the fields the chain covers, the
/// payload (its digest is what the chain covers), and the stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredLink<'a> {
    /// `seq`.
    pub seq: i64,
    /// `event_id` as stored.
    pub event_id: &'a str,
    /// `platform`.
    pub platform: &'a str,
    /// `external_id`.
    pub external_id: &'a str,
    /// `kind`.
    pub kind: &'a str,
    /// `occurred_at`, micros.
    pub occurred_at: i64,
    /// `received_at`, micros.
    pub received_at: i64,
    /// `payload` text.
    pub payload: &'a str,
    /// `hash` hex (None: never hashed).
    pub hash: Option<&'a str>,
}

impl ChainRow {
    /// The row as the checks read it.
    pub fn link(&self) -> StoredLink<'_> {
        StoredLink {
            seq: self.seq,
            event_id: &self.event_id,
            platform: &self.platform,
            external_id: &self.external_id,
            kind: &self.kind,
            occurred_at: self.occurred_at,
            received_at: self.received_at,
            payload: &self.payload,
            hash: self.hash.as_deref(),
        }
    }
}

/// Checks one row against the hash of the row before it: its hash (which is the stored one), and
/// the stub it holds when its payload is an erasure stub chained with the original's digest.
///
/// Every row can be checked this way on its own, against its predecessor's *stored* hash: when all
/// rows before it hold, that is the hash a walk from the start computes, so the first row failing
/// here is the first row at which the chain breaks. That is what lets `verify` check pages in parallel.
fn check_link(prev: &Sha256Digest, row: &StoredLink<'_>) -> Result<(Sha256Digest, Option<ErasureStub>), BreakReason> {
    let stored = row.hash.ok_or(BreakReason::Unhashed)?;
    let event_id = Uuid::parse_str(row.event_id)
        .map_err(|e| BreakReason::Unreadable(format!("event_id `{}`: {e}", row.event_id)))?;
    let mut link = ChainLink {
        seq: row.seq,
        event_id,
        platform: row.platform,
        external_id: row.external_id,
        kind: row.kind,
        occurred_at: row.occurred_at,
        received_at: row.received_at,
        payload_sha256: [0; 32],
    };
    let stored_digest = from_hex(stored);
    // A stub chains with the original's digest. A platform body that merely looks like a stub
    // chains with its own digest, and is tried second.
    let stub = ErasureStub::parse(row.payload);
    if let Some(digest) = stub.as_ref().and_then(ErasureStub::digest) {
        link.payload_sha256 = digest;
        let hash = event_hash(prev, &link);
        if Some(hash) == stored_digest {
            return Ok((hash, stub));
        }
    }
    link.payload_sha256 = payload_sha256(row.payload);
    let hash = event_hash(prev, &link);
    if Some(hash) == stored_digest {
        return Ok((hash, None));
    }
    Err(BreakReason::Mismatch {
        expected: to_hex(&hash),
        stored: stored.to_string(),
    })
}

/// What a walk must remember of a checked row to judge erasure stubs at the end, in seq order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mark {
    /// A row holding an erasure stub: (seq, erasure, hex digest of the original).
    Stub(i64, Uuid, String),
    /// A `ledger.erased` event: the stubs it records.
    Record(ErasureRecord),
}

/// Marks of a checked row (none for most rows).
fn marks_of(row: &StoredLink<'_>, stub: Option<ErasureStub>, out: &mut Vec<Mark>) {
    if let Some(stub) = stub {
        out.push(Mark::Stub(row.seq, stub.erasure_id, stub.payload_sha256));
    }
    if row.kind == ERASED_KIND {
        if let Ok(record) = serde_json::from_str::<ErasureRecord>(row.payload) {
            out.push(Mark::Record(record));
        }
    }
}

/// The check of one run of the log: the rows stored with `first_seq <= seq <= last_seq`, each checked
/// against its predecessor's stored hash, independently of every other run ([`check_run`]). A
/// [`Verifier`] takes runs in seq order and decides where the chain first breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The first seq of the run's range.
    first_seq: i64,
    /// The seq of the first row read in the range (None: no row in it).
    first_found: Option<i64>,
    /// Rows that hold, from the start of the run.
    checked: u64,
    /// The last of them: seq and hash.
    last: Option<(i64, Sha256Digest)>,
    /// The first row that does not hold (every row after it is ignored).
    broken: Option<ChainBreak>,
    /// Whether the row at the pinned seq was checked (and carries the pinned hash).
    pinned_seen: bool,
    /// Stubs and erasure records among the rows that hold, in seq order.
    marks: Vec<Mark>,
}

impl RunReport {
    /// Rows of the run that hold.
    pub fn checked(&self) -> u64 {
        self.checked
    }
}

/// Checks the rows of the range `first_seq..` (in seq order, the range's rows only). `anchor` is the
/// stored row just before the range when the store has it (ignored when `first_seq` is 1: the first
/// row chains to [`GENESIS`]); when it is not the row at `first_seq - 1`, a row is missing there,
/// which the [`Verifier`] reports before anything this run found.
pub fn check_run<'a>(
    first_seq: i64,
    anchor: Option<&StoredLink<'a>>,
    rows: impl IntoIterator<Item = StoredLink<'a>>,
    pinned: Option<&ChainHead>,
) -> RunReport {
    let mut prev = match anchor {
        _ if first_seq <= 1 => GENESIS,
        Some(a) if a.seq == first_seq - 1 => a.hash.and_then(from_hex).unwrap_or(GENESIS),
        // Missing predecessor: the verifier reports it; what this run finds does not count.
        _ => GENESIS,
    };
    let mut report = RunReport {
        first_seq,
        first_found: None,
        checked: 0,
        last: None,
        broken: None,
        pinned_seen: false,
        marks: Vec::new(),
    };
    for (next_seq, row) in (first_seq..).zip(rows) {
        report.first_found.get_or_insert(row.seq);
        if row.seq != next_seq {
            report.broken = Some(ChainBreak {
                seq: next_seq,
                reason: BreakReason::Missing { found: row.seq },
            });
            break;
        }
        let (hash, stub) = match check_link(&prev, &row) {
            Ok(checked) => checked,
            Err(reason) => {
                report.broken = Some(ChainBreak { seq: row.seq, reason });
                break;
            }
        };
        if let Some(pin) = pinned.filter(|p| p.seq == row.seq) {
            let stored = row.hash.unwrap_or_default();
            if stored != pin.hash {
                report.broken = Some(ChainBreak {
                    seq: row.seq,
                    reason: BreakReason::PinMismatch {
                        pinned: pin.hash.clone(),
                        stored: stored.to_string(),
                    },
                });
                break;
            }
            report.pinned_seen = true;
        }
        marks_of(&row, stub, &mut report.marks);
        prev = hash;
        report.last = Some((row.seq, hash));
        report.checked += 1;
    }
    report
}

/// Walks the log in `seq` order and checks every link. Feed it every row with [`check`](Self::check)
/// or runs of rows checked apart with [`absorb`](Self::absorb) (in seq order), then call
/// [`finish`](Self::finish).
#[derive(Debug, Clone)]
pub struct Verifier {
    prev: Sha256Digest,
    next_seq: i64,
    checked: u64,
    pinned_seen: bool,
    /// Stubs seen and not yet recorded by a `ledger.erased` event: seq -> (erasure, digest).
    unrecorded: BTreeMap<i64, (Uuid, String)>,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    /// A verifier for a log starting at seq 1.
    pub fn new() -> Self {
        Self {
            prev: GENESIS,
            next_seq: 1,
            checked: 0,
            pinned_seen: false,
            unrecorded: BTreeMap::new(),
        }
    }

    /// Rows checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// The hash of the last row checked (the chain head so far).
    pub fn head(&self) -> Sha256Digest {
        self.prev
    }

    /// The seq the next row must have.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// Whether a run absorbed so far checked the row at the pinned seq.
    pub fn pinned_seen(&self) -> bool {
        self.pinned_seen
    }

    /// Checks the next row.
    pub fn check(&mut self, row: &ChainRow) -> Result<(), ChainBreak> {
        let row = row.link();
        if row.seq != self.next_seq {
            return Err(ChainBreak {
                seq: self.next_seq,
                reason: BreakReason::Missing { found: row.seq },
            });
        }
        let (hash, stub) = check_link(&self.prev, &row).map_err(|reason| ChainBreak { seq: row.seq, reason })?;
        let mut marks = Vec::new();
        marks_of(&row, stub, &mut marks);
        self.apply(marks);
        self.prev = hash;
        self.next_seq += 1;
        self.checked += 1;
        Ok(())
    }

    /// Takes the next run (runs in seq order, each starting where the previous range ended). A run
    /// whose range starts after a row the walk has not seen reports that row as missing.
    pub fn absorb(&mut self, run: RunReport) -> Result<(), ChainBreak> {
        if run.first_seq != self.next_seq {
            // Rows before the run's range are missing; its first row is the next one read.
            return match run.first_found {
                Some(found) => Err(ChainBreak {
                    seq: self.next_seq,
                    reason: BreakReason::Missing { found },
                }),
                None => Ok(()),
            };
        }
        self.apply(run.marks);
        self.checked += run.checked;
        self.pinned_seen |= run.pinned_seen;
        if let Some((seq, hash)) = run.last {
            self.prev = hash;
            self.next_seq = seq + 1;
        }
        match run.broken {
            Some(broken) => Err(broken),
            None => Ok(()),
        }
    }

    fn apply(&mut self, marks: Vec<Mark>) {
        for mark in marks {
            match mark {
                Mark::Stub(seq, erasure_id, digest) => {
                    self.unrecorded.insert(seq, (erasure_id, digest));
                }
                Mark::Record(record) => {
                    for e in record.events {
                        if self.unrecorded.get(&e.seq) == Some(&(record.erasure_id, e.payload_sha256.clone())) {
                            self.unrecorded.remove(&e.seq);
                        }
                    }
                }
            }
        }
    }

    /// Ends the walk: fails on a stub no `ledger.erased` event recorded; else the number of rows checked.
    pub fn finish(&self) -> Result<u64, ChainBreak> {
        match self.unrecorded.iter().next() {
            Some((seq, (erasure_id, _))) => Err(ChainBreak {
                seq: *seq,
                reason: BreakReason::UnrecordedErasure {
                    erasure_id: *erasure_id,
                },
            }),
            None => Ok(self.checked),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, prev: &Sha256Digest, payload: &str) -> (ChainRow, Sha256Digest) {
        let event_id = Uuid::from_u128(seq as u128);
        let link = ChainLink {
            seq,
            event_id,
            platform: "aivo_live",
            external_id: "room-1",
            kind: "aivo_live.attended",
            occurred_at: 1_700_000_000_000_000 + seq,
            received_at: 1_700_000_000_500_000 + seq,
            payload_sha256: payload_sha256(payload),
        };
        let hash = event_hash(prev, &link);
        let row = ChainRow {
            seq,
            event_id: event_id.to_string(),
            platform: link.platform.into(),
            external_id: link.external_id.into(),
            kind: link.kind.into(),
            occurred_at: link.occurred_at,
            received_at: link.received_at,
            payload: payload.into(),
            hash: Some(to_hex(&hash)),
        };
        (row, hash)
    }

    fn log(payloads: &[&str]) -> Vec<ChainRow> {
        let mut prev = GENESIS;
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (r, h) = row(i as i64 + 1, &prev, p);
                prev = h;
                r
            })
            .collect()
    }

    fn verify(rows: &[ChainRow]) -> Result<u64, ChainBreak> {
        let mut v = Verifier::new();
        for r in rows {
            v.check(r)?;
        }
        v.finish()
    }

    /// The verdict of runs of `page` seqs (ranges from 1 to the highest seq), each checked apart with
    /// the row before its range, as `verify` reads them.
    fn verify_in_runs(rows: &[ChainRow], page: i64, pinned: Option<&ChainHead>) -> Result<u64, ChainBreak> {
        let mut v = Verifier::new();
        let end = rows.iter().map(|r| r.seq).max().unwrap_or(0);
        let mut first = 1;
        while first <= end {
            let last = first + page - 1;
            let anchor = rows.iter().find(|r| r.seq == first - 1).map(ChainRow::link);
            let run = rows
                .iter()
                .filter(|r| (first..=last).contains(&r.seq))
                .map(ChainRow::link);
            v.absorb(check_run(first, anchor.as_ref(), run, pinned))?;
            first = last + 1;
        }
        v.finish()
    }

    /// Logs with every kind of damage, each judged the same walked row by row and in runs of any size.
    #[test]
    fn runs_checked_apart_give_the_verdict_of_one_walk() {
        let original = "{\"text\":\"my phone is 555-0100\"}";
        let base = log(&["{}", "{\"a\":1}", original, "{\"b\":2}", "{}", "{\"c\":3}", "{}", "{}"]);
        let stubbed = |rows: &mut Vec<ChainRow>| {
            rows[2].payload = ErasureStub::new(Uuid::from_u128(7), &payload_sha256(original)).to_payload();
        };
        let mut logs: Vec<(&str, Vec<ChainRow>)> = vec![("intact", base.clone())];
        let mut changed = base.clone();
        changed[4].payload = "{\"x\":1}".into();
        logs.push(("changed payload", changed));
        for gone in [0, 1, 3, 4, 7] {
            let mut deleted = base.clone();
            deleted.remove(gone);
            logs.push(("deleted row", deleted));
        }
        let mut several = base.clone();
        several.drain(2..6);
        logs.push(("deleted rows", several));
        let mut unhashed = base.clone();
        unhashed[5].hash = None;
        logs.push(("unhashed", unhashed));
        let mut malformed = base.clone();
        malformed[3].hash = Some("zz".into());
        logs.push(("malformed hash", malformed));
        let mut bad_id = base.clone();
        bad_id[6].event_id = "not-a-uuid".into();
        logs.push(("bad id", bad_id));
        let mut unrecorded = base.clone();
        stubbed(&mut unrecorded);
        logs.push(("unrecorded stub", unrecorded));
        let mut both = base.clone();
        stubbed(&mut both);
        both[5].payload = "{}".into();
        logs.push(("stub then change", both));
        for (what, rows) in &logs {
            let walked = verify(rows);
            for page in 1..=9 {
                assert_eq!(verify_in_runs(rows, page, None), walked, "{what}, runs of {page}");
            }
        }
        assert_eq!(verify_in_runs(&base, 3, None), Ok(8));
        // A pinned head is checked wherever it falls.
        let pin = ChainHead {
            seq: 5,
            hash: base[4].hash.clone().unwrap(),
        };
        let wrong = ChainHead {
            hash: "ab".repeat(32),
            ..pin.clone()
        };
        for page in 1..=9 {
            assert_eq!(verify_in_runs(&base, page, Some(&pin)), Ok(8));
            let broken = verify_in_runs(&base, page, Some(&wrong)).unwrap_err();
            assert_eq!(broken.seq, 5);
            assert!(matches!(broken.reason, BreakReason::PinMismatch { .. }));
        }
    }

    #[test]
    fn payload_digest_is_sha256_of_the_text() {
        assert_eq!(
            to_hex(&payload_sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn event_hash_fixed_vectors() {
        // Recomputed independently with Python's hashlib over the documented byte layout:
        // prev || seq || uuid bytes || len+platform || len+external_id || len+kind || occurred || received || sha(payload)
        let link = ChainLink {
            seq: 1,
            event_id: Uuid::parse_str("00000000-0000-0000-0000-000000000001").unwrap(),
            platform: "ultimate",
            external_id: "conv-1",
            kind: "ultimate.send_message",
            occurred_at: 1_700_000_000_000_000,
            received_at: 1_700_000_000_250_000,
            payload_sha256: payload_sha256("{}"),
        };
        let first = event_hash(&GENESIS, &link);
        assert_eq!(
            to_hex(&first),
            "410e3ea31f10fd2ce5d559187bfe2b45fce19bf558ebfe17bfec6038d411d43f"
        );
        let second = event_hash(
            &first,
            &ChainLink {
                seq: 2,
                external_id: "",
                kind: "ledger.linked",
                platform: "ledger",
                ..link
            },
        );
        assert_eq!(
            to_hex(&second),
            "785ce3af70993c8ac48a348c7ab6b899e14d0885e35130453f955b0a10153b67"
        );
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let base = ChainLink {
            seq: 1,
            event_id: Uuid::nil(),
            platform: "ab",
            external_id: "c",
            kind: "k",
            occurred_at: 0,
            received_at: 0,
            payload_sha256: [0; 32],
        };
        let moved = ChainLink {
            platform: "a",
            external_id: "bc",
            ..base
        };
        assert_ne!(event_hash(&GENESIS, &base), event_hash(&GENESIS, &moved));
    }

    #[test]
    fn an_intact_log_verifies() {
        let rows = log(&["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
        assert_eq!(verify(&rows), Ok(3));
    }

    #[test]
    fn a_changed_payload_is_named_by_its_seq() {
        let mut rows = log(&["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
        rows[1].payload = "{\"b\":3}".into();
        assert_eq!(verify(&rows).unwrap_err().seq, 2);
    }

    #[test]
    fn a_changed_time_or_kind_is_caught() {
        let mut rows = log(&["{}", "{}", "{}"]);
        rows[2].occurred_at += 1;
        assert_eq!(verify(&rows).unwrap_err().seq, 3);
        let mut rows = log(&["{}", "{}", "{}"]);
        rows[0].kind = "aivo_live.close".into();
        assert_eq!(verify(&rows).unwrap_err().seq, 1);
    }

    #[test]
    fn a_deleted_row_is_named_as_missing() {
        let mut rows = log(&["{}", "{}", "{}", "{}"]);
        rows.remove(1);
        let broken = verify(&rows).unwrap_err();
        assert_eq!(broken.seq, 2);
        assert_eq!(broken.reason, BreakReason::Missing { found: 3 });
    }

    #[test]
    fn a_rehashed_forgery_still_breaks_at_the_next_row() {
        // Someone changes row 2 and recomputes its hash, but cannot fix row 3 without rewriting the rest.
        let mut rows = log(&["{}", "{\"x\":1}", "{}"]);
        let prev = from_hex(rows[0].hash.as_deref().unwrap()).unwrap();
        let (forged, _) = row(2, &prev, "{\"x\":2}");
        rows[1] = forged;
        assert_eq!(verify(&rows).unwrap_err().seq, 3);
    }

    #[test]
    fn a_recorded_erasure_keeps_the_chain() {
        let original = "{\"text\":\"my phone is 555-0100\"}";
        let mut rows = log(&["{}", original, "{}"]);
        let erasure_id = Uuid::from_u128(7);
        let stub = ErasureStub::new(erasure_id, &payload_sha256(original));
        rows[1].payload = stub.to_payload();
        // Unrecorded: verify names the stubbed row.
        let broken = verify(&rows).unwrap_err();
        assert_eq!(broken.seq, 2);
        assert_eq!(broken.reason, BreakReason::UnrecordedErasure { erasure_id });
        // Recorded by a later ledger.erased event: the chain holds.
        let record = ErasureRecord {
            erasure_id,
            at: chrono::DateTime::from_timestamp(1_700_000_100, 0).unwrap(),
            conversation_ids: vec![Uuid::from_u128(9)],
            events: vec![ErasedEvent {
                seq: 2,
                payload_sha256: stub.payload_sha256.clone(),
            }],
        };
        let prev = from_hex(rows[2].hash.as_deref().unwrap()).unwrap();
        let (mut erased, _) = row(4, &prev, &serde_json::to_string(&record).unwrap());
        erased.kind = ERASED_KIND.into();
        let link = ChainLink {
            seq: 4,
            event_id: Uuid::from_u128(4),
            platform: &erased.platform,
            external_id: &erased.external_id,
            kind: ERASED_KIND,
            occurred_at: erased.occurred_at,
            received_at: erased.received_at,
            payload_sha256: payload_sha256(&erased.payload),
        };
        erased.hash = Some(to_hex(&event_hash(&prev, &link)));
        rows.push(erased);
        assert_eq!(verify(&rows), Ok(4));
        for page in 1..=5 {
            assert_eq!(verify_in_runs(&rows, page, None), Ok(4), "runs of {page}");
        }
    }

    #[test]
    fn a_stub_with_a_false_digest_breaks_the_chain() {
        let mut rows = log(&["{}", "{\"text\":\"secret\"}"]);
        rows[1].payload = ErasureStub::new(Uuid::from_u128(1), &payload_sha256("{\"text\":\"other\"}")).to_payload();
        assert!(matches!(
            verify(&rows).unwrap_err(),
            ChainBreak {
                seq: 2,
                reason: BreakReason::Mismatch { .. }
            }
        ));
    }

    #[test]
    fn a_platform_body_shaped_like_a_stub_is_an_ordinary_payload() {
        let lookalike = ErasureStub::new(Uuid::from_u128(1), &[1; 32]).to_payload();
        let rows = log(&["{}", &lookalike]);
        assert_eq!(verify(&rows), Ok(2));
    }

    #[test]
    fn stub_text_is_exact_and_parses_back() {
        let stub = ErasureStub::new(Uuid::from_u128(1), &payload_sha256("abc"));
        let text = stub.to_payload();
        assert_eq!(
            text,
            "{\"erased\":true,\"erasure_id\":\"00000000-0000-0000-0000-000000000001\",\
             \"payload_sha256\":\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"}"
        );
        assert_eq!(ErasureStub::parse(&text), Some(stub));
        assert_eq!(ErasureStub::parse("{\"erased\": true}"), None);
        assert_eq!(ErasureStub::parse("{\"text\":\"hi\"}"), None);
    }
}
