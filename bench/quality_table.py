"""Collate embedding-quality JSON files (bench/embedding_quality.py --json) into one Markdown
table, one row per model: reconstruction (optional, from a JSON lines file of
bench/representation_study.py), noise robustness, Jacobian, conformer awareness, probe ratios.

    python bench/quality_table.py NAME=QUALITY.json ... [--study runs/study.jsonl]
"""
import argparse
import json

PROBES = ("U0", "gap", "homo", "mu", "alpha", "Cv")


def row(name: str, q: dict, study: dict) -> str:
    n, j, c, p = q["noise"], q["jacobian"], q.get("conformers", {}), q["probe"]
    s = study.get(name, {})
    cells = [name, f"{s['rmsd_mean']:.3f}" if s else "–",
             f"{n['sigma_0.1']['self_retrieval']:.3f}", f"{n['sigma_0.01']['ratio_max']:.2f}",
             f"{j['p50']:.1f} / {j['max']:.0f}",
             f"{c.get('spearman_rho', float('nan')):.3f}", f"{c.get('sibling_nn_rate', float('nan')):.3f}"]
    cells += [f"{p[t]['ratio']:.2f}" for t in PROBES]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="NAME=quality.json")
    ap.add_argument("--study", default=None, help="JSON lines of representation_study.py (val rmsd per variant)")
    args = ap.parse_args()
    study = {}
    if args.study:
        for line in open(args.study):
            r = json.loads(line)
            study[r["variant"]] = r
    head = ["model", "val rmsd (Å)", "self-retrieval σ=0.1", "worst ‖Δz‖/NN σ=0.01", "‖∂z/∂x‖₂ p50 / max",
            "conformer ρ", "sibling NN"] + [f"probe {t} z/counts" for t in PROBES]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for item in args.models:
        name, path = item.split("=", 1)
        print(row(name, json.load(open(path)), study))


if __name__ == "__main__":
    main()
