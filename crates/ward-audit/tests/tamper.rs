//! Log verification: a clean log verifies, and each kind of tampering is
//! detected and named at the right sequence number.

mod common;

use ward_audit::checkpoint::{
    Checkpoint, append_to_file, format_checkpoints, parse_checkpoints, read_file,
};
use ward_audit::merkle::consistency_proof;
use ward_audit::verify::{prove_range, verify_extension};
use ward_audit::{
    Appender, Error, Hash, LogKey, Problem, StoredAudit, VerifyReport, verify_log, verify_range,
};
use ward_crypto::SigningKey;

use common::{read_record, search_record};

const ORIGIN: &str = "ward.test/audit";

struct Log {
    rows: Vec<StoredAudit>,
    checkpoints: Vec<Checkpoint>,
    key: SigningKey,
}

impl Log {
    /// Writes `count` records, signing a checkpoint after each size in
    /// `checkpoint_at`.
    fn new(count: u64, checkpoint_at: &[u64]) -> Self {
        let key = SigningKey::generate().unwrap();
        let mut appender = Appender::new();
        let mut rows = Vec::new();
        let mut checkpoints = Vec::new();
        if checkpoint_at.contains(&0) {
            checkpoints.push(appender.checkpoint(ORIGIN, 1_700_000_000, &key).unwrap());
        }
        for i in 0..count {
            let record = if i % 2 == 0 {
                search_record(i)
            } else {
                read_record(i)
            };
            rows.push(appender.append(&record).unwrap());
            if checkpoint_at.contains(&(i + 1)) {
                let timestamp = 1_700_000_000 + i as i64;
                checkpoints.push(appender.checkpoint(ORIGIN, timestamp, &key).unwrap());
            }
        }
        Self {
            rows,
            checkpoints,
            key,
        }
    }

    fn log_key(&self) -> LogKey<'_> {
        let (x, y) = self.key.public_key_xy();
        LogKey {
            origin: ORIGIN,
            x,
            y,
        }
    }

    fn verify(&self) -> VerifyReport {
        verify_log(&self.rows, &self.checkpoints, &self.log_key())
    }

    fn problem(&self) -> Problem {
        match self.verify() {
            VerifyReport::Invalid(problem) => problem,
            VerifyReport::Valid(summary) => panic!("tampering not detected: {summary:?}"),
        }
    }
}

/// Rebuilds rows from `from` onward with fresh hashes, as someone with write
/// access to the database but not the signing key could.
fn rewrite_from(
    rows: &mut [StoredAudit],
    from: usize,
    edit: impl Fn(&mut ward_audit::AuditRecord),
) {
    let mut appender = Appender::from_rows(&rows[..from]);
    for row in &mut rows[from..] {
        let mut entry = ward_audit::ChainEntry::from_canonical(&row.canonical).unwrap();
        edit(&mut entry.record);
        *row = appender.append(&entry.record).unwrap();
    }
}

#[test]
fn clean_log_verifies() {
    let log = Log::new(20, &[0, 5, 16]);
    let VerifyReport::Valid(summary) = log.verify() else {
        panic!("clean log rejected: {:?}", log.verify());
    };
    assert_eq!(summary.tree_size, 20);
    assert_eq!(summary.checkpoints, 3);
    assert_eq!(summary.uncovered, 4);
    assert_eq!(summary.chain_head, log.rows[19].chain_hash);
    let leaves: Vec<Hash> = log.rows.iter().map(|row| row.leaf_hash).collect();
    assert_eq!(summary.root, ward_audit::merkle::root(&leaves));
}

#[test]
fn empty_log_verifies() {
    let log = Log::new(0, &[0]);
    assert!(log.verify().is_valid());
}

#[test]
fn content_edit_detected() {
    let mut log = Log::new(10, &[10]);
    let text = String::from_utf8(log.rows[4].canonical.clone()).unwrap();
    log.rows[4].canonical = text.replace("req-0004", "req-9999").into_bytes();
    assert_eq!(log.problem(), Problem::ContentChanged { seq: 4 });
}

#[test]
fn content_edit_with_row_hashes_detected() {
    let mut log = Log::new(10, &[10]);
    let text = String::from_utf8(log.rows[4].canonical.clone()).unwrap();
    let row = &mut log.rows[4];
    row.canonical = text.replace("req-0004", "req-9999").into_bytes();
    row.leaf_hash = ward_audit::leaf_hash(&row.canonical);
    row.chain_hash = ward_audit::chain_hash(&row.prev_hash, &row.leaf_hash);
    assert_eq!(log.problem(), Problem::ChainBroken { seq: 5 });
}

#[test]
fn full_rewrite_caught_by_checkpoint() {
    let mut log = Log::new(12, &[4, 8]);
    rewrite_from(&mut log.rows, 6, |record| {
        record.detail.insert("request_id".into(), "forged".into());
    });
    assert_eq!(log.problem(), Problem::CheckpointRoot { tree_size: 8 });
}

#[test]
fn rewrite_after_last_checkpoint_is_uncovered() {
    let mut log = Log::new(12, &[8]);
    rewrite_from(&mut log.rows, 9, |record| record.detail.clear());
    // No signed checkpoint covers seq 8 to 11, so the rewrite verifies. The
    // report counts those records as uncovered instead of calling them pinned.
    let VerifyReport::Valid(summary) = log.verify() else {
        panic!("unexpected problem");
    };
    assert_eq!(summary.uncovered, 4);
}

#[test]
fn deleted_record_detected_as_gap() {
    let mut log = Log::new(10, &[10]);
    log.rows.remove(3);
    assert_eq!(
        log.problem(),
        Problem::Gap {
            expected: 3,
            found: 4
        }
    );
}

#[test]
fn deleted_and_renumbered_detected() {
    let mut log = Log::new(10, &[10]);
    log.rows.remove(3);
    for row in &mut log.rows[3..] {
        row.seq -= 1;
    }
    assert_eq!(log.problem(), Problem::SeqMismatch { seq: 3, written: 4 });
}

#[test]
fn inserted_duplicate_detected() {
    let mut log = Log::new(10, &[10]);
    let copy = log.rows[6].clone();
    log.rows.insert(7, copy);
    assert_eq!(log.problem(), Problem::DuplicateSeq { seq: 6 });
}

#[test]
fn inserted_forged_record_detected() {
    let mut log = Log::new(10, &[10]);
    // A forged row with correct hashes at seq 5, and the rest renumbered.
    let mut appender = Appender::from_rows(&log.rows[..5]);
    let forged = appender.append(&search_record(77)).unwrap();
    log.rows.insert(5, forged);
    for row in &mut log.rows[6..] {
        row.seq += 1;
    }
    assert_eq!(log.problem(), Problem::SeqMismatch { seq: 6, written: 5 });
}

#[test]
fn swapped_rows_detected() {
    let mut log = Log::new(10, &[10]);
    let (first, second) = (log.rows[2].clone(), log.rows[3].clone());
    log.rows[2] = StoredAudit { seq: 2, ..second };
    log.rows[3] = StoredAudit { seq: 3, ..first };
    assert_eq!(log.problem(), Problem::SeqMismatch { seq: 2, written: 3 });
}

#[test]
fn rows_out_of_order_detected() {
    let mut log = Log::new(10, &[10]);
    let row = log.rows[1].clone();
    log.rows.insert(3, row);
    assert_eq!(
        log.problem(),
        Problem::OutOfOrder {
            seq: 1,
            previous: 2
        }
    );
}

#[test]
fn truncation_detected() {
    let mut log = Log::new(10, &[5, 9]);
    log.rows.truncate(7);
    assert_eq!(
        log.problem(),
        Problem::Truncated {
            log_size: 7,
            checkpoint_size: 9
        }
    );
}

#[test]
fn stored_hash_columns_checked() {
    let mut log = Log::new(6, &[6]);
    log.rows[2].prev_hash[0] ^= 1;
    assert_eq!(log.problem(), Problem::PrevHashMismatch { seq: 2 });

    let mut log = Log::new(6, &[6]);
    log.rows[3].chain_hash[31] ^= 1;
    assert_eq!(log.problem(), Problem::ChainHashMismatch { seq: 3 });
}

#[test]
fn malformed_row_detected() {
    let mut log = Log::new(4, &[]);
    log.rows[1].canonical = b"{\"not\":\"an entry\"}".to_vec();
    let problem = log.problem();
    assert!(
        matches!(problem, Problem::Malformed { seq: 1, .. }),
        "{problem:?}"
    );
    assert!(!problem.to_string().contains("an entry"), "{problem}");
}

#[test]
fn forged_checkpoint_detected() {
    let mut log = Log::new(8, &[4, 8]);
    log.checkpoints[0].root[0] ^= 1;
    assert_eq!(log.problem(), Problem::CheckpointSignature { tree_size: 4 });

    let mut log = Log::new(8, &[4, 8]);
    log.checkpoints[1].tree_size = 7;
    assert_eq!(log.problem(), Problem::CheckpointSignature { tree_size: 7 });
}

#[test]
fn checkpoint_from_other_key_detected() {
    let mut log = Log::new(8, &[8]);
    let other = SigningKey::generate().unwrap();
    let genuine = &log.checkpoints[0];
    let forged = Checkpoint::sign(
        ORIGIN,
        genuine.tree_size,
        genuine.root,
        genuine.chain_head,
        genuine.timestamp,
        &other,
    )
    .unwrap();
    log.checkpoints.push(forged.clone());
    assert_eq!(log.problem(), Problem::CheckpointKeyId { tree_size: 8 });

    // The same forgery relabelled with the trusted key id.
    log.checkpoints.pop();
    log.checkpoints.push(Checkpoint {
        key_id: log.key.kid().to_owned(),
        ..forged
    });
    assert_eq!(log.problem(), Problem::CheckpointSignature { tree_size: 8 });
}

#[test]
fn checkpoint_of_other_log_detected() {
    let mut log = Log::new(3, &[]);
    let appender = Appender::from_rows(&log.rows);
    let other = appender
        .checkpoint("other.test/audit", 0, &log.key)
        .unwrap();
    log.checkpoints.push(other);
    assert_eq!(log.problem(), Problem::CheckpointOrigin { tree_size: 3 });
}

#[test]
fn problem_messages_name_seq() {
    let message = Problem::ContentChanged { seq: 42 }.to_string();
    assert_eq!(
        message,
        "seq 42: record content changed (leaf hash mismatch)"
    );
    assert_eq!(Problem::ContentChanged { seq: 42 }.seq(), Some(42));
    assert_eq!(Problem::CheckpointRoot { tree_size: 3 }.seq(), None);
}

#[test]
fn range_verifies_against_checkpoint() {
    let log = Log::new(30, &[25]);
    let checkpoint = &log.checkpoints[0];
    let leaves: Vec<Hash> = log.rows.iter().map(|row| row.leaf_hash).collect();
    for (from, to) in [(0, 25), (3, 9), (24, 25), (10, 11)] {
        let proofs = prove_range(&leaves, from, to, 25).unwrap();
        let rows = &log.rows[from as usize..to as usize];
        let report = verify_range(rows, from, to, &proofs, checkpoint, &log.log_key());
        assert!(report.is_valid(), "{from}..{to}: {report:?}");
    }
    assert!(prove_range(&leaves, 5, 26, 25).is_none());
    assert!(prove_range(&leaves, 5, 5, 25).is_none());
}

#[test]
fn range_detects_tampering() {
    let log = Log::new(16, &[16]);
    let checkpoint = &log.checkpoints[0];
    let key = log.log_key();
    let leaves: Vec<Hash> = log.rows.iter().map(|row| row.leaf_hash).collect();
    let proofs = prove_range(&leaves, 4, 8, 16).unwrap();
    let problem = |rows: &[StoredAudit], proofs: &[Vec<Hash>], from, to| {
        verify_range(rows, from, to, proofs, checkpoint, &key)
            .problem()
            .cloned()
    };

    // A row rewritten with consistent hashes is not in the signed tree.
    let mut rows = log.rows.clone();
    rewrite_from(&mut rows, 5, |record| record.detail.clear());
    assert_eq!(
        problem(&rows[4..8], &proofs, 4, 8),
        Some(Problem::NotIncluded { seq: 5 })
    );

    let mut rows = log.rows[4..8].to_vec();
    rows.remove(1);
    assert!(matches!(
        problem(&rows, &proofs, 4, 8),
        Some(Problem::RangeIncomplete { .. })
    ));

    let mut bad_proofs = proofs.clone();
    bad_proofs[2][0][0] ^= 1;
    assert_eq!(
        problem(&log.rows[4..8], &bad_proofs, 4, 8),
        Some(Problem::NotIncluded { seq: 6 })
    );

    assert!(matches!(
        problem(&log.rows[4..8], &proofs, 14, 18),
        Some(Problem::RangeOutsideCheckpoint { .. })
    ));

    let tail_proofs = prove_range(&leaves, 12, 16, 16).unwrap();
    let mut tail = log.rows[12..16].to_vec();
    tail[3].canonical.push(b' ');
    assert!(matches!(
        problem(&tail, &tail_proofs, 12, 16),
        Some(Problem::Malformed { seq: 15, .. })
    ));
}

#[test]
fn extension_between_checkpoints() {
    let log = Log::new(21, &[7, 21]);
    let key = log.log_key();
    let (old, new) = (&log.checkpoints[0], &log.checkpoints[1]);
    let leaves: Vec<Hash> = log.rows.iter().map(|row| row.leaf_hash).collect();
    let proof = consistency_proof(&leaves, 7).unwrap();
    assert_eq!(verify_extension(old, new, &proof, &key), Ok(()));

    // A checkpoint over a forked history does not extend the old one.
    let mut forked_rows = log.rows.clone();
    rewrite_from(&mut forked_rows, 3, |record| record.detail.clear());
    let forked = Appender::from_rows(&forked_rows)
        .checkpoint(ORIGIN, 0, &log.key)
        .unwrap();
    let forked_leaves: Vec<Hash> = forked_rows.iter().map(|row| row.leaf_hash).collect();
    let forked_proof = consistency_proof(&forked_leaves, 7).unwrap();
    assert_eq!(
        verify_extension(old, &forked, &forked_proof, &key),
        Err(Problem::Inconsistent {
            old_size: 7,
            new_size: 21
        })
    );
}

#[test]
fn checkpoint_text_round_trip() {
    let log = Log::new(5, &[5]);
    let checkpoint = &log.checkpoints[0];
    let text = checkpoint.to_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[0], ORIGIN);
    assert_eq!(lines[1], "5");
    assert!(lines[3].starts_with("chain-head "));
    assert_eq!(lines[4], "timestamp 1700000004");
    assert_eq!(lines[5], "");
    assert!(lines[6].starts_with(&format!("\u{2014} {} ", log.key.kid())));

    let parsed = Checkpoint::from_text(&text).unwrap();
    assert_eq!(&parsed, checkpoint);
    let (x, y) = log.key.public_key_xy();
    assert!(parsed.verify(x, y));
}

#[test]
fn checkpoint_text_rejects_changes() {
    let log = Log::new(5, &[5]);
    let text = log.checkpoints[0].to_text();
    let lines: Vec<&str> = text.split('\n').collect();
    let mutations: Vec<(usize, String)> = vec![
        (1, "05".into()),
        (1, "-5".into()),
        (2, "AAAA".into()),
        (3, "chain-head !!".into()),
        (4, "timestamp +1".into()),
        (5, "x".into()),
        (6, format!("- {}", &lines[6][4..])),
        (0, String::new()),
        (0, "bad\tname".into()),
    ];
    for (index, replacement) in mutations {
        let mut changed = lines.clone();
        changed[index] = &replacement;
        let result = Checkpoint::from_text(&changed.join("\n"));
        assert!(
            matches!(result, Err(Error::InvalidCheckpoint { .. })),
            "line {index} = {replacement:?} accepted"
        );
    }
    assert!(Checkpoint::from_text(&text[..text.len() - 1]).is_err());
    assert!(Checkpoint::from_text(&format!("{text}{text}")).is_err());
    assert!(Checkpoint::from_text("").is_err());
}

#[test]
fn checkpoint_file_appends_and_reads() {
    let log = Log::new(9, &[0, 3, 9]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.checkpoint");
    for checkpoint in &log.checkpoints {
        append_to_file(&path, checkpoint).unwrap();
    }
    let read = read_file(&path).unwrap();
    assert_eq!(read, log.checkpoints);
    assert_eq!(parse_checkpoints(&format_checkpoints(&read)).unwrap(), read);
    assert!(verify_log(&log.rows, &read, &log.log_key()).is_valid());

    let text = std::fs::read_to_string(&path).unwrap();
    let broken = text.replacen("\n\n\u{2014}", "\n\u{2014}", 1);
    assert!(parse_checkpoints(&broken).is_err());
    assert!(parse_checkpoints("").unwrap().is_empty());
    assert!(read_file(&dir.path().join("missing")).is_err());
}

#[test]
fn checkpoint_sign_rejects_bad_origin() {
    let key = SigningKey::generate().unwrap();
    for origin in ["", " lead", "line\nbreak", "ünïcode"] {
        let result = Checkpoint::sign(origin, 0, [0; 32], [0; 32], 0, &key);
        assert!(
            matches!(result, Err(Error::InvalidCheckpointField { .. })),
            "{origin:?}"
        );
    }
}

/// Prints the cost of one append (validation, canonical form, two hashes
/// and the accumulator update) and of its parts.
#[test]
#[ignore = "timing only"]
fn append_timing() {
    let records: Vec<_> = (0..1000).map(search_record).collect();
    let rounds = 20_000;
    let per_record =
        |start: std::time::Instant| start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);

    let start = std::time::Instant::now();
    for i in 0..rounds as usize {
        assert!(
            std::hint::black_box(&records[i % records.len()])
                .validate()
                .is_ok()
        );
    }
    println!("validate: {:.2} µs", per_record(start));

    let start = std::time::Instant::now();
    for i in 0..rounds as usize {
        let record = &records[i % records.len()];
        std::hint::black_box(
            ward_audit::chain::canonical_bytes(i as u64, &[0; 32], record).unwrap(),
        );
    }
    println!("canonical bytes: {:.2} µs", per_record(start));

    let canonical = ward_audit::chain::canonical_bytes(0, &[0; 32], &records[0]).unwrap();
    let mut tree = ward_audit::MerkleAccumulator::new();
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        let leaf = ward_audit::leaf_hash(&canonical);
        std::hint::black_box(ward_audit::chain_hash(&leaf, &leaf));
        tree.push(&leaf);
    }
    println!(
        "hashes and accumulator ({} bytes): {:.2} µs",
        canonical.len(),
        per_record(start)
    );

    let mut appender = Appender::new();
    let start = std::time::Instant::now();
    for i in 0..rounds as usize {
        std::hint::black_box(appender.append(&records[i % records.len()]).unwrap());
    }
    println!(
        "append: {:.2} µs per record over {rounds} records",
        per_record(start)
    );
}
