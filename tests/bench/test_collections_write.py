from bench.collections_write import distinct_pngs, main


def test_distinct_uploads_are_distinct():
    pngs = distinct_pngs(300, size=16)
    assert len(set(pngs)) == 300


def test_collections_write_runs_adds_against_embeds(micro_package):
    report = main(
        [
            "--model",
            str(micro_package),
            "--seconds",
            "0.4",
            "--rounds",
            "1",
            "--clients",
            "1,2",
            "--images",
            "2",
            "--pool",
            "600",
        ]
    )
    assert all(a["points_per_s"] > 0 for a in report["store_alone"].values())
    assert [r["clients"] for r in report["rows"]] == [1, 2]
    for row in report["rows"]:
        for cell in ("embed", "add", "add_no_fsync"):
            assert row[cell]["errors"] == 0 and row[cell]["requests"] > 0
        assert row["add_vs_embed"] > 0 and row["add_no_fsync_vs_embed"] > 0
    added = sum(r["add"]["requests"] + r["add_no_fsync"]["requests"] for r in report["rows"])
    assert report["uploads"] >= added
