"""One PNG per op family: effective bandwidth (the bytes the op must move over
its time) against size, for fastdrop and every peer, with the copy roofline."""

from pathlib import Path


def plot_families(records, roofline, folder, device, families):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtypes = list(dict.fromkeys(r["dtype"] for r in records))
    dtype = "float32" if "float32" in dtypes else dtypes[0]
    paths = []
    for family in families:
        family_records = [r for r in records if r["family"] == family and r["dtype"] == dtype]
        ops = list(dict.fromkeys(r["op"] for r in family_records))
        if not ops:
            continue
        figure, axes = plt.subplots(len(ops), 2, figsize=(11, 3.6 * len(ops)), squeeze=False)
        for row, op in enumerate(ops):
            for column, direction in enumerate(("fwd", "fwd+bwd")):
                axis = axes[row][column]
                cases = sorted(
                    (r for r in family_records if r["op"] == op and r["direction"] == direction),
                    key=lambda r: r["numel"],
                )
                names = list(dict.fromkeys(name for r in cases for name in r["seconds"]))
                for name in names:
                    points = [
                        (r["numel"], r["bytes"] / r["seconds"][name] / 1e9) for r in cases if name in r["seconds"]
                    ]
                    style = dict(linewidth=2.5, color="black") if name == "fastdrop" else dict(linewidth=1.2)
                    axis.plot(*zip(*points), marker="o", markersize=3, label=name, **style)
                axis.axhline(roofline / 1e9, linestyle="--", color="grey", label="copy roofline")
                axis.set_xscale("log", base=2)
                axis.set_yscale("log")
                axis.set_title(f"{op} {direction} ({dtype}, {device})")
                axis.set_xlabel("elements")
                axis.set_ylabel("effective GB/s")
                axis.grid(True, which="both", alpha=0.3)
                axis.legend(fontsize=7)
        figure.tight_layout()
        path = folder / f"{device}-{family.replace(' ', '-')}.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        paths.append(path)
    return paths
