//! The backward-compatibility lint of expand migrations, over a table of
//! migration files: each rule triggers, each safe variant does not, waivers
//! with and without a reason, contract files allowed, parse errors named by
//! line. No server is needed: the lint only parses.

use bluegreen_core::{ErrorKind, MigrationPhase};
use bluegreen_postgres::{lint_expand_file, Finding, MigrationSource, Rule};

/// One migration file of the table and the findings it must give, as
/// (line, rule), in line order.
struct Case {
    file: &'static str,
    sql: &'static str,
    expect: &'static [(usize, &'static str)],
}

const CASES: &[Case] = &[
    // Each rule triggers.
    Case {
        file: "0101_drop_column.up.sql",
        sql: "ALTER TABLE orders ADD COLUMN note text;\n\nALTER TABLE orders DROP COLUMN legacy_flag;\n",
        expect: &[(3, "ban-drop-column")],
    },
    Case {
        file: "0102_drop_table.up.sql",
        sql: "-- the audit table moved\nDROP TABLE IF EXISTS audit.order_events, order_notes;\n",
        expect: &[(2, "ban-drop-table"), (2, "ban-drop-table")],
    },
    Case {
        file: "0103_rename_column.up.sql",
        sql: "ALTER TABLE orders\n  RENAME COLUMN total TO total_cents;\n",
        expect: &[(1, "renaming-column")],
    },
    Case {
        file: "0104_rename_table.up.sql",
        sql: "ALTER TABLE orders RENAME TO purchases;\nALTER TABLE invoices SET SCHEMA billing;\n",
        expect: &[(1, "renaming-table"), (2, "renaming-table")],
    },
    Case {
        file: "0105_required_field.up.sql",
        sql: "ALTER TABLE orders ADD COLUMN region text NOT NULL;\nALTER TABLE orders ADD COLUMN code text PRIMARY KEY;\n",
        expect: &[(1, "adding-required-field"), (2, "adding-required-field")],
    },
    Case {
        file: "0106_set_not_null.up.sql",
        sql: "/* tighten */ ALTER TABLE orders ALTER COLUMN customer_id SET NOT NULL;\n",
        expect: &[(1, "adding-not-nullable-field")],
    },
    Case {
        file: "0107_change_type.up.sql",
        sql: "SELECT 1;\nSELECT 2;\nSELECT 3;\nALTER TABLE orders ALTER COLUMN total TYPE numeric(12,2), DROP COLUMN legacy_flag;\n",
        expect: &[(4, "changing-column-type"), (4, "ban-drop-column")],
    },
    Case {
        file: "0108_index.up.sql",
        sql: "-- bluegreen: phase=expand\nCREATE INDEX orders_customer_idx ON orders (customer_id);\nCREATE UNIQUE INDEX ON orders (external_id);\n",
        expect: &[
            (2, "require-concurrent-index-creation"),
            (3, "require-concurrent-index-creation"),
        ],
    },
    Case {
        file: "0109_constraints.up.sql",
        sql: "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk\n  FOREIGN KEY (customer_id) REFERENCES customers (id);\n\nALTER TABLE orders ADD CONSTRAINT total_positive CHECK (total >= 0);\n",
        expect: &[
            (1, "constraint-missing-not-valid"),
            (4, "constraint-missing-not-valid"),
        ],
    },
    // Each safe variant does not.
    Case {
        file: "0201_safe_columns.up.sql",
        sql: "ALTER TABLE orders ADD COLUMN metadata jsonb;\n\
              ALTER TABLE orders ADD COLUMN region text NOT NULL DEFAULT 'eu';\n\
              ALTER TABLE orders ADD COLUMN seq bigserial;\n\
              ALTER TABLE orders ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY;\n\
              ALTER TABLE orders ADD COLUMN total_x2 numeric GENERATED ALWAYS AS (total * 2) STORED;\n\
              ALTER TABLE orders ALTER COLUMN note SET DEFAULT '';\n\
              ALTER TABLE orders ALTER COLUMN note DROP NOT NULL;\n",
        expect: &[],
    },
    Case {
        file: "0202_safe_index.up.sql",
        sql: "-- bluegreen: no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS orders_customer_idx ON orders (customer_id);\n",
        expect: &[],
    },
    Case {
        file: "0203_safe_constraints.up.sql",
        sql: "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id) NOT VALID;\n\
              ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_fk;\n\
              ALTER TABLE orders ADD CONSTRAINT total_positive CHECK (total >= 0) NOT VALID;\n\
              ALTER TABLE orders VALIDATE CONSTRAINT total_positive;\n",
        expect: &[],
    },
    Case {
        file: "0204_new_table.up.sql",
        sql: "CREATE TABLE shipments (id bigint PRIMARY KEY, order_id bigint NOT NULL);\n\
              CREATE INDEX shipments_order_idx ON shipments (order_id);\n\
              ALTER TABLE shipments ADD CONSTRAINT shipments_order_fk FOREIGN KEY (order_id) REFERENCES orders (id);\n\
              ALTER TABLE shipments ADD COLUMN carrier text NOT NULL;\n",
        expect: &[],
    },
    Case {
        file: "0205_strings_and_comments.up.sql",
        sql: "-- DROP TABLE orders; in a comment\n\
              COMMENT ON COLUMN orders.note IS 'ALTER TABLE orders DROP COLUMN note; is not run';\n\
              DO $$ BEGIN RAISE NOTICE 'DROP TABLE orders'; END $$;\n\
              DROP INDEX CONCURRENTLY IF EXISTS orders_old_idx;\n",
        expect: &[],
    },
    // Waivers.
    Case {
        file: "0301_waived.up.sql",
        sql: "-- bluegreen: phase=expand\n\
              -- bluegreen:allow ban-drop-column: the old release never reads legacy_flag\n\
              ALTER TABLE orders DROP COLUMN legacy_flag;\n\
              /* bluegreen:allow require-concurrent-index-creation: orders_archive is written by nobody */\n\
              CREATE INDEX ON orders_archive (created_at);\n",
        expect: &[],
    },
    Case {
        file: "0302_waiver_without_reason.up.sql",
        sql: "-- bluegreen:allow ban-drop-column\nALTER TABLE orders DROP COLUMN legacy_flag;\n-- bluegreen:allow ban-drop-table:   \nDROP TABLE order_notes;\n",
        expect: &[
            (1, "invalid-waiver"),
            (2, "ban-drop-column"),
            (3, "invalid-waiver"),
            (4, "ban-drop-table"),
        ],
    },
    Case {
        file: "0303_waiver_misplaced.up.sql",
        sql: "ALTER TABLE orders ADD note text; -- bluegreen:allow ban-drop-column: trails the previous statement\n\
              ALTER TABLE orders\n\
              -- bluegreen:allow ban-drop-column: inside the statement\n\
                DROP COLUMN legacy_flag;\n\
              -- bluegreen:allow ban-drop-table: after the last statement\n",
        expect: &[
            (1, "invalid-waiver"),
            (2, "ban-drop-column"),
            (3, "invalid-waiver"),
            (5, "invalid-waiver"),
        ],
    },
    Case {
        file: "0304_waiver_of_nothing.up.sql",
        sql: "-- bluegreen:allow ban-drop-table: the old release never reads it\nALTER TABLE orders DROP COLUMN legacy_flag;\n-- bluegreen:allow ban-drop-colum: a typo\nALTER TABLE orders ADD note text;\n",
        expect: &[(1, "invalid-waiver"), (2, "ban-drop-column"), (3, "invalid-waiver")],
    },
    // Files that do not parse.
    Case {
        file: "0401_syntax_error.up.sql",
        sql: "ALTER TABLE orders ADD note text;\n\n-- a typo follows\nALTER TABLE orders\n  DROPP COLUMN legacy_flag;\nDROP TABLE orders;\n",
        expect: &[(4, "syntax-error")],
    },
    Case {
        file: "0402_unterminated.up.sql",
        sql: "SELECT 1;\nSELECT 2;\nINSERT INTO t VALUES ('never closed);\nSELECT 3;\n",
        expect: &[(3, "syntax-error")],
    },
];

fn findings_of(c: &Case) -> Vec<(usize, String)> {
    lint_expand_file(c.file, c.sql)
        .into_iter()
        .map(|f| (f.line, f.rule.name().to_string()))
        .collect()
}

#[test]
fn each_file_of_the_table_gives_exactly_its_findings() {
    let mut wrong = Vec::new();
    for c in CASES {
        let got = findings_of(c);
        let want: Vec<(usize, String)> =
            c.expect.iter().map(|(l, r)| (*l, r.to_string())).collect();
        if got != want {
            wrong.push(format!(
                "{}: want {want:?}, got {:#?}",
                c.file,
                lint_expand_file(c.file, c.sql)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_waivable_rule_is_triggered_by_the_table() {
    let seen: Vec<String> = CASES.iter().flat_map(findings_of).map(|(_, r)| r).collect();
    for rule in Rule::WAIVABLE
        .iter()
        .map(|r| r.name())
        .chain(["syntax-error", "invalid-waiver"])
    {
        assert!(seen.iter().any(|r| r == rule), "no case triggers {rule}");
    }
}

#[test]
fn a_finding_names_file_line_rule_and_why_the_old_color_breaks() {
    let f = lint_expand_file(
        "0101_drop_column.up.sql",
        "ALTER TABLE orders ADD COLUMN note text;\n\nALTER TABLE orders DROP COLUMN legacy_flag;\n",
    );
    assert_eq!(
        f[0].to_string(),
        "0101_drop_column.up.sql:3: ban-drop-column: drops column orders.legacy_flag, which the old color still reads and writes"
    );
    let json = serde_json::to_value(&f[0]).unwrap();
    assert_eq!(json["rule"], "ban-drop-column");
    assert_eq!(json["line"], 3);
    for c in CASES {
        for f in lint_expand_file(c.file, c.sql) {
            assert!(
                !f.message.contains('\n') && f.message.len() > 20,
                "{}: one line saying why: {f}",
                c.file
            );
        }
    }
}

#[test]
fn a_waiver_without_a_reason_says_how_to_write_one_and_does_not_waive() {
    let f = lint_expand_file(
        "0302_waiver_without_reason.up.sql",
        "-- bluegreen:allow ban-drop-column\nALTER TABLE orders DROP COLUMN legacy_flag;\n",
    );
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(f[0].message.contains("without a reason"), "{}", f[0]);
    assert!(!f[0].rule.is_waivable());
    assert_eq!(f[1].rule, Rule::BanDropColumn);
}

#[test]
fn a_file_that_does_not_parse_names_the_line_and_the_parsers_message() {
    let c = CASES
        .iter()
        .find(|c| c.file == "0401_syntax_error.up.sql")
        .unwrap();
    let f = lint_expand_file(c.file, c.sql);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].line, f[0].rule), (4, Rule::SyntaxError));
    assert!(f[0].message.contains("DROPP"), "{}", f[0]);
    let f = lint_expand_file("nul.up.sql", "SELECT 1;\nSELECT\0 2;");
    assert_eq!((f[0].line, f[0].rule), (2, Rule::SyntaxError));
}

#[test]
fn contract_files_may_do_what_expand_files_must_not() {
    let source = MigrationSource::from_files([
        (
            "0001_add_region.up.sql",
            "-- bluegreen:allow adding-required-field: orders is empty until launch\nALTER TABLE orders ADD COLUMN region text NOT NULL;",
        ),
        (
            "0002_drop_legacy.up.sql",
            "-- bluegreen: phase=contract\nALTER TABLE orders DROP COLUMN legacy_flag;\nALTER TABLE orders RENAME COLUMN total TO total_cents;\nCREATE INDEX ON orders (region);\nDROP TABLE order_notes;",
        ),
        // A down file undoes its expand migration: not linted.
        ("0001_add_region.down.sql", "ALTER TABLE orders DROP COLUMN region;"),
    ])
    .expect("a waiver before the first statement is not a header directive");
    assert_eq!(source.migrations()[1].phase, MigrationPhase::Contract);
    assert_eq!(source.lint(), Vec::<Finding>::new());
    source.check_backward_compatible().unwrap();
}

#[test]
fn an_expand_finding_refuses_the_source_listing_every_finding() {
    let source = MigrationSource::from_files([
        ("0001_ok.up.sql", "ALTER TABLE orders ADD COLUMN metadata jsonb;"),
        (
            "0002_tidy.up.sql",
            "ALTER TABLE orders ADD note text;\nALTER TABLE orders DROP COLUMN legacy_flag;\nCREATE INDEX ON orders (note);",
        ),
    ])
    .unwrap();
    let e = source.check_backward_compatible().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let m = e.to_string();
    assert!(
        m.contains("0002_tidy.up.sql:2: ban-drop-column")
            && m.contains("0002_tidy.up.sql:3: require-concurrent-index-creation")
            && m.contains("2 findings"),
        "{m}"
    );
}

/// Prints the table's findings (`cargo test -p bluegreen-postgres --test
/// lint -- --nocapture findings_table`), as the issue note reports them.
#[test]
fn findings_table() {
    let mut n = 0;
    for c in CASES {
        for f in lint_expand_file(c.file, c.sql) {
            println!("| {} | {} | {} | {} |", f.file, f.line, f.rule, f.message);
            n += 1;
        }
    }
    let expected: usize = CASES.iter().map(|c| c.expect.len()).sum();
    assert_eq!(n, expected);
}
