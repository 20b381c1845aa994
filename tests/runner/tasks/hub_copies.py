"""Small local copies of the hub datasets the presets read, in each repo's own columns and file
layout (helpers.write_hub_dataset). The rows are written for these tests; only the column names
and types follow the real datasets.

    write_all(root) -> root/openai/gsm8k, root/Rowan/hellaswag, root/allenai/ai2_arc,
                       root/cais/mmlu (all 57 subjects), root/EleutherAI/wikitext_document_level,
                       root/rajpurkar/squad
"""
from __future__ import annotations

from pathlib import Path

from tests.runner.tasks.helpers import write_hub_dataset

GSM8K_TRAIN = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?",
     "Tom starts with 3 apples.\nHe buys 4 more, so 3 + 4 = <<3+4=7>>7.\n#### 7"),
    ("A box holds 6 pens. How many pens are in 5 boxes?",
     "Each box holds 6 pens.\n5 boxes hold 5 * 6 = <<5*6=30>>30 pens.\n#### 30"),
    ("Mia had 20 dollars and spent 8. How much money is left?",
     "She spent 8 of 20 dollars.\n20 - 8 = <<20-8=12>>12 dollars are left.\n#### 12"),
    ("A train travels 60 miles each hour for 3 hours. How far does it go?",
     "In 3 hours it goes 3 * 60 = <<3*60=180>>180 miles.\n#### 180"),
    ("There are 15 birds on a tree and 9 fly away. How many remain?",
     "15 - 9 = <<15-9=6>>6 birds remain.\n#### 6"),
    ("Sam reads 12 pages a day. How many pages does he read in a week?",
     "A week has 7 days.\n7 * 12 = <<7*12=84>>84 pages.\n#### 84"),
    ("A shirt costs 25 dollars and a hat costs 10. What do both cost?",
     "25 + 10 = <<25+10=35>>35 dollars.\n#### 35"),
    ("Lily has 4 bags with 8 marbles each. She gives away 10. How many are left?",
     "She has 4 * 8 = <<4*8=32>>32 marbles.\nAfter giving 10 away: 32 - 10 = <<32-10=22>>22.\n"
     "#### 22"),
]
GSM8K_TEST = [
    ("Anna has 5 cookies and bakes 6 more. How many cookies does she have?",
     "5 + 6 = <<5+6=11>>11.\n#### 11"),
    ("A farmer has 3 fields with 12 cows each. How many cows are there?",
     "3 * 12 = <<3*12=36>>36.\n#### 36"),
    ("A book costs 14 dollars. Ben pays with a 20 dollar bill. What is his change?",
     "20 - 14 = <<20-14=6>>6.\n#### 6"),
    ("A class has 9 boys and 11 girls. How many students are in the class?",
     "9 + 11 = <<9+11=20>>20.\n#### 20"),
    ("Each of 4 friends eats 2 slices of pizza. How many slices do they eat?",
     "4 * 2 = <<4*2=8>>8.\n#### 8"),
    ("A jar had 50 candies. Kids took 1,200 over a year from refills. Ignore that; it has 50 "
     "left minus 15 eaten today. How many are left?", "50 - 15 = <<50-15=35>>35.\n#### 35"),
]

HELLASWAG = [
    ("Washing dishes", "A man fills the sink with warm water and soap.", "he",
     ["scrubs each plate with a sponge and rinses it.", "throws the plates out the window.",
      "paints the sink [header] bright red.", "sings to the faucet for an hour."], "0"),
    ("Making a snowman", "Two children roll a big ball of snow across the yard.", "they",
     ["eat the snow ball quickly.", "stack a smaller ball on top and add a carrot nose.",
      "take the ball [title] Into the kitchen oven.", "mail the ball to a friend."], "1"),
    ("Tying shoes", "A girl sits on the steps and pulls her laces tight.", "she",
     ["cuts the laces off.", "throws the shoes in the pond.",
      "crosses the laces and loops them into a bow.", "falls asleep on the steps."], "2"),
    ("Planting a tree", "[title] How to plant a tree. A woman digs a deep hole in the garden.",
     "she",
     ["fills the hole with sand and leaves.", "places a cake in the hole.",
      "drives away in a car.", "sets the young tree in the hole and packs soil around it."],
     "3"),
    ("Brushing teeth", "A boy squeezes toothpaste onto his brush.", "he",
     ["brushes his teeth in small circles and spits.", "brushes the dog instead.",
      "puts the brush in the fridge.", "writes a letter with the toothpaste."], "0"),
]


def hellaswag_rows() -> list[dict]:
    return [{"ind": i, "activity_label": a, "ctx_a": ca, "ctx_b": cb, "ctx": f"{ca} {cb}",
             "endings": e, "source_id": f"src-{i}", "split": "val", "split_type": "indomain",
             "label": label} for i, (a, ca, cb, e, label) in enumerate(HELLASWAG)]


ARC = [
    ("Which object is attracted to a magnet?", ["a wooden spoon", "an iron nail",
                                                 "a glass cup", "a paper towel"], "B"),
    ("What do plants need from the Sun to make food?", ["light", "sound", "wind", "rocks"],
     "A"),
    ("Which of these is a liquid at room temperature?", ["ice", "steam", "water", "salt"], "C"),
    ("What causes day and night on Earth?", ["the Moon's orbit", "clouds",
                                             "the seasons", "Earth's rotation"], "D"),
    ("Which animal is a mammal?", ["a shark", "a frog", "a dolphin", "a snake"], "C"),
    ("What is the boiling point of water at sea level in Celsius?", ["50", "100", "0", "212"],
     "B"),
]


def arc_rows(prefix: str, numeric: bool = False) -> list[dict]:
    out = []
    for i, (q, texts, key) in enumerate(ARC):
        labels = ["1", "2", "3", "4"] if numeric else ["A", "B", "C", "D"]
        answer = labels["ABCD".index(key)]
        out.append({"id": f"{prefix}-{i}", "question": q,
                    "choices": {"text": texts, "label": labels}, "answerKey": answer})
    return out


def mmlu_subjects() -> list[str]:
    """The 57 subjects' dataset names, as the presets in conf/task/ name them."""
    folder = Path(__file__).resolve().parents[3] / "conf" / "task"
    groups = ("mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities")
    return sorted(p.stem[len("mmlu_"):] for p in folder.glob("mmlu_*.yaml")
                  if p.stem not in groups)


def mmlu_rows(subject: str, split: str, n: int) -> list[dict]:
    words = subject.replace("_", " ")
    return [{"question": f"  In {words}, which option is number {(j + len(subject)) % 4 + 1} "
                         f"of item {j}?  ",
             "subject": subject, "choices": [f"option {c} of {j}" for c in range(1, 5)],
             "answer": (j + len(subject) + (split == "dev")) % 4} for j in range(n)]


WIKITEXT_PAGES = [
    " = Valley Station = \n The Valley Station is a small railway station in the hills , "
    "built in 1898 @-@ 1899 . It has two platforms and a wooden shelter . \n = = History = = "
    "\n The line was opened by the county company , which ran four trains a day . In the 1920s "
    "the station handled 2 @,@ 000 passengers a year , mostly farmers ' families . \n",
    " = River Alder = \n The River Alder flows for 34 @.@ 5 kilometres through meadows and "
    "woods . Its water is clear and cold ; trout live in the upper reaches . \n = = Course = = "
    "\n The river rises on a moor , falls over a series of small weirs ( known locally as the "
    "steps ) and joins the larger river near the old mill . Anglers say it is one of the "
    "quietest rivers in the region , and the path beside it is popular with walkers in "
    "spring . \n",
]

SQUAD = [
    ("Harbor_Town", "Harbor Town is a fishing village on the east coast. Its lighthouse was "
     "built in 1872 and painted red and white.", "When was the lighthouse built?",
     ["1872", "in 1872"]),
    ("Harbor_Town", "Harbor Town is a fishing village on the east coast. Its lighthouse was "
     "built in 1872 and painted red and white.", "What colors is the lighthouse painted?",
     ["red and white"]),
    ("Green_Valley", "The Green Valley school has 240 pupils and a library with 5,000 books. "
     "Its headteacher is Ms. Alvarez.", "Who is the headteacher?",
     ["Ms. Alvarez", "Alvarez"]),
]


def squad_rows() -> list[dict]:
    out = []
    for i, (title, ctx, q, answers) in enumerate(SQUAD):
        out.append({"id": f"sq-{i}", "title": title, "context": ctx, "question": q,
                    "answers": {"text": answers,
                                "answer_start": [max(ctx.find(a), 0) for a in answers]}})
    return out


def write_all(root: Path) -> Path:
    def qa(rows):
        return [{"question": q, "answer": a} for q, a in rows]

    write_hub_dataset(root, "openai/gsm8k", {"main": {"train": qa(GSM8K_TRAIN),
                                                      "test": qa(GSM8K_TEST)}})
    hs = hellaswag_rows()
    write_hub_dataset(root, "Rowan/hellaswag", {None: {"train": hs, "validation": hs,
                                                       "test": hs}})
    write_hub_dataset(root, "allenai/ai2_arc", {
        "ARC-Easy": {"train": arc_rows("e-train"), "validation": arc_rows("e-val"),
                     "test": arc_rows("e-test")},
        "ARC-Challenge": {"train": arc_rows("c-train", True),
                          "validation": arc_rows("c-val", True),
                          "test": arc_rows("c-test", True)}})
    write_hub_dataset(root, "cais/mmlu", {
        s: {"test": mmlu_rows(s, "test", 2), "validation": mmlu_rows(s, "validation", 1),
            "dev": mmlu_rows(s, "dev", 5)} for s in mmlu_subjects()})
    pages = [{"page": p} for p in WIKITEXT_PAGES]
    write_hub_dataset(root, "EleutherAI/wikitext_document_level", {
        "wikitext-2-raw-v1": {"train": pages, "validation": pages, "test": pages}})
    sq = squad_rows()
    write_hub_dataset(root, "rajpurkar/squad", {"plain_text": {"train": sq, "validation": sq}})
    return root
