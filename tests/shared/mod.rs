//! Where the team's shared test data lives (`shared/testdata`, `shared/reference`): next to the
//! checkout (`../shared`, as for `/work/main`), or one level further up (`../../shared`, as
//! for a worktree under `/work/wt/NAME`), or where `CRI_GUARD_SHARED` points. Tests that read
//! it print a notice and pass when it is absent (e.g. outside this workspace), unless
//! `CRI_GUARD_REQUIRE_SHARED` is set (CI sets it): then its absence fails the test.

use std::path::PathBuf;

/// `shared/<sub>` if it exists.
pub fn dir(sub: &str) -> Option<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("CRI_GUARD_SHARED").map(PathBuf::from),
        Some(manifest.join("../shared")),
        Some(manifest.join("../../shared")),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .map(|base| base.join(sub))
        .find(|p| p.exists());
    if found.is_none() && std::env::var_os("CRI_GUARD_REQUIRE_SHARED").is_some() {
        panic!(
            "shared/{sub} not found beside the checkout (../shared, ../../shared or \
             $CRI_GUARD_SHARED), and CRI_GUARD_REQUIRE_SHARED is set"
        );
    }
    found
}
