//! The picture of a report (`svg` feature): rendered by a real SVG renderer (`rsvg-convert`,
//! Debian's librsvg2-bin), it must parse and draw; the PNG is kept for people to look at.
#![cfg(feature = "svg")]

use scopealloc::{Scope, ScopeAlloc};

#[global_allocator]
static GLOBAL: ScopeAlloc = ScopeAlloc::new();

#[test]
fn the_report_picture_renders_with_a_real_svg_renderer() {
    let server = Scope::root().child("server");
    let tenants: Vec<Scope> = ["tenant-a", "tenant-b", "tenant-c"]
        .iter()
        .map(|n| server.child(n))
        .collect();
    let mut keep = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        for r in 0..3 {
            let req = t.child(&format!("request-{r}"));
            keep.push(req.run(|| vec![1u8; (i + 1) * (r + 1) * (200 << 10)]));
            std::mem::forget(req); // keep the scope open: its box stays in the picture
        }
    }
    let svg = server.report().svg();
    assert!(
        svg.contains("server/tenant-c/request-2"),
        "every scope has a box"
    );
    let dir = env!("CARGO_TARGET_TMPDIR");
    let svg_path = format!("{dir}/report.svg");
    let png_path = format!("{dir}/report.png");
    std::fs::write(&svg_path, &svg).unwrap();
    let out = std::process::Command::new("rsvg-convert")
        .args(["-o", &png_path, &svg_path])
        .output()
        .expect("rsvg-convert (Debian's librsvg2-bin) must be installed to check the picture");
    assert!(
        out.status.success(),
        "rsvg-convert refused the SVG: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&png_path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 2000,
        "a drawn picture"
    );
    eprintln!("picture: {png_path}");
}
