//! The book cannot drift from the code: its generated reference pages (the spec, the
//! command line, the configuration) must be what the code renders now, and the README
//! stays a first screen. (`tests/run.sh` builds the book and checks its links.)

use std::path::Path;

#[test]
fn the_books_generated_reference_pages_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reference");
    let mut stale = Vec::new();
    for (name, text) in trainyard::cli::reference::pages() {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        if committed != text {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "docs/reference/{stale:?} stale: run `cargo run -- reference --out docs/reference`"
    );
}

#[test]
fn the_reference_pages_name_every_flag_variable_and_spec_definition() {
    let pages = trainyard::cli::reference::pages();
    let page = |n: &str| &pages.iter().find(|(name, _)| *name == n).unwrap().1;
    for env in [
        "DATABASE_URL",
        "TRAINYARD_API_KEY_FILE",
        "TRAINYARD_ADMIN_KEY_FILE",
        "TRAINYARD_DATA_DIR",
    ] {
        assert!(
            page("configuration.md").contains(&format!("`{env}`")),
            "{env}"
        );
    }
    for cmd in [
        "`trainyard serve`",
        "`trainyard keys create`",
        "`trainyard submit`",
    ] {
        assert!(page("cli.md").contains(cmd), "{cmd}");
    }
    assert!(
        !page("cli.md").contains("## `trainyard reference`"),
        "hidden stays hidden"
    );
    let schema = trainyard::spec::schema::document();
    for def in schema["$defs"].as_object().unwrap().keys() {
        assert!(page("spec.md").contains(&format!("## {def}\n")), "{def}");
    }
}

#[test]
fn the_readme_is_a_first_screen() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines: at most 300, the rest in docs/"
    );
}
