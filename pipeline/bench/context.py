"""`llmpipe bench context`, offline: the long-conversation and RAG workload
(pipeline/context/workload.py) through each context strategy alone and together, with no
Kafka, no provider and no model call.

    llmpipe bench context [-n 200] [--seed 15] [--model gpt-4.1] [--summary-model gpt-4o-mini]

Printed per strategy, over the whole workload and per kind (chat, rag): input tokens before
and after (the routing estimate, pipeline/routing/tokens.py), the cut, the input cost
before and after at the catalog price of ``--model`` (integer nano-dollars, one request at
a time) and the share of the facts each final question needs that are still in what would
be sent; beside them the issue's floors: >= 20% fewer input tokens with >= 99% of the
needed facts kept. The acceptance line is the policy ``ACCEPTANCE``.

**The summary is not measured.** Replacing the dropped turns by a summary needs a model
call. Its row is the window's, plus a summary message of an *assumed* ``SUMMARY_TOKENS``
tokens, plus what the summary call costs at ``--summary-model`` (the transcript in,
``SUMMARY_TOKENS`` out, one call per request: uncached). Its facts are split into those
the window kept and those only in the dropped turns, which the summary would have to
carry; none of them is counted as kept."""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass, field

from pipeline.catalog import Catalog, load_catalog, nanos_to_usd
from pipeline.context import ContextPolicy, compress, summary_prompt
from pipeline.context.summary import SUMMARY_PREFIX
from pipeline.context.workload import (CHAT, DEFAULT_CASES, DEFAULT_SEED, RAG, Case,
                                       facts_present, workload)
from pipeline.events.models import ChatMessage
from pipeline.routing.tokens import estimate_message_tokens, estimate_messages_tokens

HELP = "context strategies on the long-chat + RAG workload: input-token and cost cut, facts kept"
FLOOR_CUT = 0.20                  # the acceptance floors
FLOOR_FACTS = 0.99
SUMMARY_TOKENS = 200              # assumed length of a summary (not measured: needs a model)
# (label, override string); "+summary" rows add the assumed summary
STRATEGIES = (
    ("normalise", "normalise"),
    ("retrieved top-4", "top_k=4"),
    ("window 8 turns", "window=8"),
    ("window 8 + summary*", "window=8,summarise"),
    ("normalise + top-4", "normalise,top_k=4"),
    ("all, no summary", "normalise,top_k=4,window=8"),
    ("all + summary*", "normalise,top_k=4,window=8,summarise"),
)
ACCEPTANCE = "normalise,top_k=4"


@dataclass
class Tally:
    requests: int = 0
    before: int = 0
    after: int = 0
    cost_before: int = 0             # nano-dollars
    cost_after: int = 0              # nano-dollars, summary calls included
    facts: int = 0
    kept: int = 0
    in_dropped: int = 0              # facts only in turns a summary would have to carry
    lost_at: Counter = field(default_factory=Counter)

    @property
    def cut(self) -> float:
        return 1 - self.after / self.before if self.before else 0.0

    @property
    def cost_cut(self) -> float:
        return 1 - self.cost_after / self.cost_before if self.cost_before else 0.0

    @property
    def kept_share(self) -> float:
        return self.kept / self.facts if self.facts else 1.0

    def meets(self) -> bool:
        return self.cut >= FLOOR_CUT and self.kept_share >= FLOOR_FACTS


@dataclass(frozen=True)
class Outcome:
    """One case under one policy."""
    before: int
    after: int
    cost_before: int
    cost_after: int
    present: list[bool]
    in_dropped: list[bool]


def run_case(case: Case, policy: ContextPolicy, catalog: Catalog, model: str,
             summary_model: str) -> Outcome:
    sent, decision = compress(case.messages, policy)
    after = decision.tokens_after
    cost_after = 0
    if decision.to_summarise:
        after += estimate_message_tokens(ChatMessage("system", SUMMARY_PREFIX)) + SUMMARY_TOKENS
        prompt = estimate_messages_tokens(summary_prompt(list(decision.to_summarise)))
        cost_after += catalog.cost_nanos(summary_model, prompt, SUMMARY_TOKENS)
    cost_after += catalog.cost_nanos(model, after, 0)
    return Outcome(decision.tokens_before, after,
                   catalog.cost_nanos(model, decision.tokens_before, 0), cost_after,
                   facts_present(sent, case.facts),
                   facts_present(list(decision.to_summarise), case.facts))


def add(tally: Tally, case: Case, o: Outcome) -> None:
    tally.requests += 1
    tally.before += o.before
    tally.after += o.after
    tally.cost_before += o.cost_before
    tally.cost_after += o.cost_after
    tally.facts += len(o.present)
    tally.kept += sum(o.present)
    tally.in_dropped += sum(d and not p for p, d in zip(o.present, o.in_dropped))
    tally.lost_at.update(place for place, p in zip(case.places, o.present) if not p)


def measure(cases: list[Case], override: str, catalog: Catalog, model: str,
            summary_model: str) -> dict[str, Tally]:
    """Tallies for the whole workload ("all") and per kind, under one policy."""
    policy = ContextPolicy.parse(override)
    tallies = {"all": Tally(), CHAT: Tally(), RAG: Tally()}
    for case in cases:
        outcome = run_case(case, policy, catalog, model, summary_model)
        add(tallies["all"], case, outcome)
        add(tallies[case.kind], case, outcome)
    return tallies


def usd(nanos: int) -> str:
    return f"${nanos_to_usd(nanos):.4f}"


def verdict(ok: bool) -> str:
    return "meets" if ok else "BELOW"


def row(label: str, t: Tally) -> str:
    facts = f"{t.kept_share:>7.2%}"
    if t.in_dropped:
        facts += f" (+{t.in_dropped / t.facts:.1%} only in the summary's input)"
    return (f"{label:<22} {t.before:>9} {t.after:>9} {t.cut:>6.1%}  {usd(t.cost_before):>9} "
            f"{usd(t.cost_after):>9} {t.cost_cut:>6.1%}  {verdict(t.meets()):<6} {facts}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=int, default=DEFAULT_CASES, help="cases (chat and RAG alternate)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--model", default="gpt-4.1", help="the model whose input price is saved")
    p.add_argument("--summary-model", default="gpt-4o-mini",
                   help="the model the summary rows pay for their (assumed) summary calls")


def main(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    model, summary_model = catalog.model(args.model), catalog.model(args.summary_model)
    cases = workload(args.n, args.seed)
    kinds = Counter((c.kind, c.lang) for c in cases)
    print(f"workload: {len(cases)} cases, seed {args.seed}: "
          + ", ".join(f"{k} {l} {v}" for (k, l), v in sorted(kinds.items()))
          + f"; {sum(len(c.facts) for c in cases)} needed facts")
    print(f"price: {model.name} input ${model.input_per_mtok}/MTok; summary calls at "
          f"{summary_model.name} ${summary_model.input_per_mtok} in / "
          f"${summary_model.output_per_mtok} out per MTok (catalog {catalog.price_version})")
    print(f"floors: input tokens cut >= {FLOOR_CUT:.0%} with needed facts kept >= "
          f"{FLOOR_FACTS:.0%}\n")
    header = (f"{'strategy':<22} {'tokens':>9} {'after':>9} {'cut':>6}  {'cost':>9} "
              f"{'after':>9} {'cut':>6}  floors facts kept")
    results = {}
    for kind in ("all", CHAT, RAG):
        print(f"== {'whole workload' if kind == 'all' else kind + ' cases'} ==")
        print(header)
        for label, override in STRATEGIES:
            if override not in results:
                results[override] = measure(cases, override, catalog, model.name,
                                            summary_model.name)
            print(row(label, results[override][kind]))
        print()
    print("facts lost, by where they were (whole workload):")
    for label, override in STRATEGIES:
        lost = results[override]["all"].lost_at
        print(f"  {label:<22} " + (", ".join(f"{p} {n}" for p, n in sorted(lost.items()))
                                   or "none"))
    print(f"\n* assumed summary of {SUMMARY_TOKENS} tokens, not measured; its call costed at "
          f"{summary_model.name}, once per request (no prefix cache hits); facts it would have "
          "to carry are not counted as kept.")
    t = results[ACCEPTANCE]["all"]
    ok = t.meets()
    print(f"\nacceptance ({ACCEPTANCE}): input tokens -{t.cut:.1%} (floor {FLOOR_CUT:.0%}), "
          f"facts kept {t.kept_share:.2%} (floor {FLOOR_FACTS:.0%}): {verdict(ok)}")
    return 0 if ok else 1
