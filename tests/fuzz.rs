//! No input makes the parsers panic: the image header sniffer, the config loader and the vendors'
//! answer classifiers see whatever a drop folder, an operator or a network hands them.

use std::path::Path;

use imgsyncd::config::Config;
use imgsyncd::image::inspect;
use proptest::prelude::*;

/// A real image to mutate: most random bytes fail at the magic number, mutations reach deeper.
fn seed_images() -> Vec<Vec<u8>> {
    let img = image::RgbImage::from_fn(20, 12, |x, y| image::Rgb([x as u8, y as u8, 7]));
    [
        image::ImageFormat::Png,
        image::ImageFormat::Jpeg,
        image::ImageFormat::Gif,
        image::ImageFormat::Bmp,
        image::ImageFormat::WebP,
    ]
    .into_iter()
    .map(|format| {
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img.clone())
            .write_to(&mut out, format)
            .unwrap();
        out.into_inner()
    })
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_image_sniffer_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = inspect(&bytes);
    }

    #[test]
    fn the_image_sniffer_never_panics_on_damaged_images(
        which in 0usize..5,
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    ) {
        let mut bytes = seed_images().swap_remove(which);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let keep = cut.index(bytes.len() + 1);
        bytes.truncate(keep);
        let _ = inspect(&bytes);
    }

    #[test]
    fn the_config_loader_never_panics(text in "(\\PC|\\n|:|-| ){0,400}") {
        let _ = Config::parse(&text, Path::new("/etc/imgsyncd/daemon.yaml"));
    }

    #[test]
    fn the_config_loader_never_panics_on_damaged_configs(
        cut in any::<prop::sample::Index>(),
        insert in "(\\PC|\\n){0,20}",
    ) {
        let good = "journal: /tmp/j.sqlite3\nvendors:\n  erp:\n    kind: kingdee\n    client_id: \"1\"\n    \
                    client_secret: s\n    app_key: k\n    app_secret: a\n    domain: https://tf.jdy.com\n  \
                    wiki:\n    kind: feishu\n    app_id: cli\n    app_secret: x\nwatches:\n  - path: /srv/drop\n    \
                    vendor: erp\n    poll: 30s\n";
        let at = cut.index(good.len());
        let at = (0..=at).rev().find(|i| good.is_char_boundary(*i)).unwrap_or(0);
        let text = format!("{}{insert}{}", &good[..at], &good[at..]);
        let _ = Config::parse(&text, Path::new("/etc/imgsyncd/daemon.yaml"));
    }

    #[test]
    fn the_feishu_classifier_never_panics(
        status in 0u16..1000,
        code in proptest::option::of(any::<i64>()),
        message in "\\PC{0,64}",
        wait in proptest::option::of(0u64..100_000),
    ) {
        let _ = imgsyncd::adapters::feishu::classify::<()>(
            status,
            code,
            &message,
            "upload",
            wait.map(std::time::Duration::from_secs),
        );
    }
}
