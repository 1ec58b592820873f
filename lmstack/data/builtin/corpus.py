"""The pretraining corpus: natural-looking English and Korean documents written from the world.

File format: UTF-8 text, one document per paragraph block. Documents are separated by one blank
line ("\\n\\n") and no document contains a blank line (dialogues and glossaries use single
newlines), so `text.strip().split("\\n\\n")` recovers the documents.

Two files come out of one world:
- train.txt states the facts of train, validation and test entities (closed-book questions are
  answerable only from what pretraining stored) and generic text whose key falls in the train
  split (reviews, stories, translation pairs) or outside the heldout split (arithmetic facts);
- val.txt is written only about heldout entities and heldout keys, so none of its documents
  (and none of its facts) occur in train.txt: its perplexity measures generalisation.

Generation streams: documents are appended to a buffer flushed every ~1 MB, so memory stays flat
whatever the size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from . import lexicon as lx
from . import phrases as ph
from .lexicon import article, josa, obj_a
from .world import Person, Town, World

TRAIN_WEIGHTS = {
    "bio_en": 18, "bio_ko": 8, "town_en": 5, "town_ko": 3, "animal_en": 3, "animal_ko": 2, "objects_en": 3,
    "situations_en": 10, "story_en": 12, "news_en": 3, "review_en": 8, "review_ko": 6, "dialogue_en": 7, "secret_en": 3,
    "arith_en": 6, "arith_ko": 3, "glossary": 7,
}
# val.txt: only document kinds that can be written about heldout entities or heldout keys.
VAL_WEIGHTS = {
    "bio_en": 22, "bio_ko": 10, "town_en": 6, "town_ko": 3, "story_en": 14, "news_en": 4, "dialogue_en": 8,
    "secret_en": 3, "review_en": 6, "review_ko": 5, "arith_en": 5, "arith_ko": 2, "glossary": 6,
}


@dataclass
class _Ctx:
    world: World
    rng: random.Random
    seed: int
    heldout: bool  # writing val.txt?
    people: list[Person]  # whose facts may be stated
    talkers: list[Person]  # who may appear in dialogues (question/answer text)
    towns: list[Town]  # whose facts may be stated
    places: list[Town]  # towns that may be named in stories/news
    forms_en: dict = field(default_factory=dict)
    forms_ko: dict = field(default_factory=dict)
    intros_en: dict = field(default_factory=dict)
    intros_ko: dict = field(default_factory=dict)
    tforms_en: dict = field(default_factory=dict)
    tforms_ko: dict = field(default_factory=dict)
    residents: dict = field(default_factory=dict)

    def key_ok(self, key: str, arithmetic: bool = False) -> bool:
        s = ph.key_split(self.seed, key)
        if self.heldout:
            return s == "heldout"
        # Arithmetic facts are world knowledge like the people's facts: all but heldout ones are stated.
        return s != "heldout" if arithmetic else s == "train"


def _make_ctx(world: World, seed: int, heldout: bool) -> _Ctx:
    rng = random.Random(f"corpus:{'val' if heldout else 'train'}:{seed}")
    if heldout:
        people = world.pool("heldout")
        towns = world.town_pool("heldout")
        talkers = people
        places = towns + [t for t in world.towns if any(p.town == t.name for p in people)]
    else:
        people = [p for p in world.people if p.split != "heldout"]
        towns = [t for t in world.towns if t.split != "heldout"]
        talkers = world.pool("train")
        places = towns
    ctx = _Ctx(world, rng, seed, heldout, people, talkers, towns, places)
    for p in people:  # pre-render fact sentences once: documents then only pick and join
        ctx.forms_en[p.name] = ph.person_forms_en(world, p)
        ctx.forms_ko[p.name] = ph.person_forms_ko(world, p)
        ctx.intros_en[p.name] = ph.person_intro_en(p)
        ctx.intros_ko[p.name] = ph.person_intro_ko(world, p)
    for t in towns:
        ctx.tforms_en[t.name] = ph.town_forms_en(world, t)
        ctx.tforms_ko[t.name] = ph.town_forms_ko(world, t)
    return ctx


_RELS = ["town", "job", "pet", "food", "age"]


def _bio_en(c: _Ctx) -> str:
    r = c.rng
    p = r.choice(c.people)
    forms = c.forms_en[p.name]
    rels = r.sample(_RELS, r.randint(2, 4))
    sents = [r.choice(c.intros_en[p.name])] + [r.choice(forms[k]) for k in rels]
    if r.random() < 0.3:
        sents.append(f"{p.name}'s best friend is {p.friend}.")
    return " ".join(sents)


def _bio_ko(c: _Ctx) -> str:
    r = c.rng
    p = r.choice(c.people)
    forms = c.forms_ko[p.name]
    rels = r.sample(_RELS, r.randint(2, 4))
    sents = [r.choice(c.intros_ko[p.name])] + [r.choice(forms[k]) for k in rels]
    if r.random() < 0.3:
        sents.append(f"{p.name_ko}의 가장 친한 친구는 {josa(c.world.ko(p.friend), 'cop')}.")
    return " ".join(sents)


def _residents(c: _Ctx, t: Town) -> list[Person]:
    if not c.residents:
        for p in c.people:
            c.residents.setdefault(p.town, []).append(p)
        c.residents[""] = []
    return c.residents.get(t.name, [])


def _town_en(c: _Ctx) -> str:
    r = c.rng
    t = r.choice(c.towns)
    f = c.tforms_en[t.name]
    sents = [r.choice(f[k]) for k in r.sample(["country", "river", "population"], 3)]
    res = _residents(c, t)
    if res:
        some = r.sample(res, min(len(res), r.randint(1, 3)))
        listed = [f"{p.name}, {article(p.job)}" for p in some]
        joined = listed[0] if len(listed) == 1 else "; ".join(listed[:-1]) + "; and " + listed[-1]
        sents.append(f"People who live in {t.name} include {joined}.")
    return " ".join(sents)


def _town_ko(c: _Ctx) -> str:
    r = c.rng
    t = r.choice(c.towns)
    f = c.tforms_ko[t.name]
    sents = [r.choice(f[k]) for k in r.sample(["country", "river", "population"], 3)]
    res = _residents(c, t)
    if res:
        p = r.choice(res)
        sents.append(f"{t.name_ko}에는 {lx.JOBS[p.job]} {josa(p.name_ko, 'subj')} 산다.")
    return " ".join(sents)


def _animal_en(c: _Ctx) -> str:
    r = c.rng
    sp = r.choice(ph.ANIMAL_NAMES)
    a = lx.ANIMALS[sp]
    legs = f"an animal with {a['legs']} legs" if a["legs"] else "an animal with no legs"
    sents = [f"The {sp} is {legs}.",
             f"{a['plural'].capitalize()} live in {a['habitat'][0]} and eat {a['eats']}.",
             f"{article(sp).capitalize()} {a['sound'][0]}." if a["sound"] else f"{a['plural'].capitalize()} make almost no sound."]
    r.shuffle(sents)
    return " ".join(sents)


def _animal_ko(c: _Ctx) -> str:
    r = c.rng
    sp = r.choice(ph.ANIMAL_NAMES)
    a = lx.ANIMALS[sp]
    ko = a["ko"]
    legs = f"다리가 {lx.number_ko(a['legs'])} 개인 동물" if a["legs"] else "다리가 없는 동물"
    sents = [f"{josa(ko, 'topic')} {josa(legs, 'cop')}.",
             f"{josa(ko, 'topic')} {a['habitat'][1]}에 살고 {josa(lx.ANIMAL_FOOD_KO[a['eats']], 'obj')} 먹는다.",
             f"{josa(ko, 'topic')} '{a['sound'][1]}' 하고 운다." if a["sound"] else f"{josa(ko, 'topic')} 거의 소리를 내지 않는다."]
    r.shuffle(sents)
    return " ".join(sents)


_OBJECTS = sorted(lx.OBJECT_USES)


def _objects_en(c: _Ctx) -> str:
    r = c.rng
    out = []
    for o in r.sample(_OBJECTS, r.randint(3, 5)):
        use = lx.OBJECT_USES[o]
        out.append(r.choice([f"People use {obj_a(o)} to {use}.", f"{lx.plural_object(o).capitalize()} are used to {use}.",
                             f"To {use}, you need {obj_a(o)}."]))
    return " ".join(out)


def _situations_en(c: _Ctx) -> str:
    """Everyday situations and the sensible action (lexicon.SITUATIONS): the knowledge the commonsense cluster
    asks about, stated as pretraining text the way FLAN's held-out tasks rely on what pretraining stored. Only
    people of this corpus's own split act in them (the task items of a split are about that split's people), so
    no validation or test item's situation sentence occurs in train.txt."""
    r = c.rng
    people = [p for p in c.people if p.split == ("heldout" if c.heldout else "train")] or c.people
    out = []
    for _ in range(r.randint(2, 4)):
        p, si = r.choice(people), r.randrange(len(lx.SITUATIONS))
        _, sit, act = lx.SITUATIONS[si]
        act = act.format(pet=p.pet_species)
        out.append(sit.format(n=p.name, pet=p.pet_species) + " " + r.choice([
            f"So {p.name} decides to {act}.", f"The sensible thing is to {act}, and {p.name} does.",
            f"{p.name}'s friend says: \"You should {act}.\"", f"{p.name} knows what to do: {act}."]))
    return " ".join(out)


def _keyed(c: _Ctx, make, arithmetic: bool = False, tries: int = 50):
    """Draw items from `make` until one's key belongs to this corpus (see module docstring)."""
    for _ in range(tries):
        item = make()
        if c.key_ok(item[-1], arithmetic):
            return item
    return None


def _story_en(c: _Ctx) -> str:
    r = c.rng
    for _ in range(50):
        ev = ph.make_event(r, c.world, r.choice(c.people), c.places)
        if c.key_ok(ph.event_key(ev)):
            return ph.story_text(r, ev)
    return _bio_en(c)


def _news_en(c: _Ctx) -> str:
    r = c.rng
    towns = c.towns or c.places
    got = _keyed(c, lambda: ph.make_news(r, c.world, r.choice(towns), c.people))
    return got[0] if got else _bio_en(c)


def _review_en(c: _Ctx) -> str:
    got = _keyed(c, lambda: ph.make_review_en(c.rng))
    if got is None:
        return _bio_en(c)
    text, label, _ = got
    stars = c.rng.choice([4, 5]) if label == "positive" else c.rng.choice([1, 2])
    return f"Rating: {stars}/5\n{text}"


def _review_ko(c: _Ctx) -> str:
    got = _keyed(c, lambda: ph.make_review_ko(c.rng))
    if got is None:
        return _bio_ko(c)
    text, label, _ = got
    stars = c.rng.choice([4, 5]) if label == "positive" else c.rng.choice([1, 2])
    return f"별점: {stars}점\n{text}"


def _dialogue_en(c: _Ctx) -> str:
    r = c.rng
    p, q = r.sample(c.talkers, 2)
    ex = [("Where do you live now, {p}?", f"I live in {p.town}."),
          ("What do you do for work?", f"I am {article(p.job)}."),
          ("Do you have any pets?", f"Yes, {article(p.pet_colour)} {p.pet_species} named {p.pet_name}."),
          ("What is your favourite food?", f"{p.food.capitalize()}, of course."),
          ("How old are you now?", f"I am {p.age}."),
          ("Who is your best friend?", f"{p.friend}. We meet every week.")]
    lines = [f"{q.name}: Hello, {p.name}! It is good to see you.", f"{p.name}: Hello, {q.name}!"]
    for qu, an in r.sample(ex, r.randint(2, 3)):
        lines.append(f"{q.name}: {qu.format(p=p.name)}")
        lines.append(f"{p.name}: {an}")
    lines.append(f"{q.name}: {r.choice(['Nice! See you soon.', 'Great, goodbye!', 'Take care.'])}")
    return "\n".join(lines)


def _secret_en(c: _Ctx) -> str:
    r = c.rng
    p = r.choice(c.people)
    s = lx.SECRETS[p.secret][0]
    return r.choice([
        f"Everyone in {p.town} knows {p.name}, the {p.job}. But only {p.friend} knows that {p.name} {s}. "
        f"{p.name} asked {p.friend} never to tell anyone.",
        f"{p.name} has a secret. {p.name} {s}. Nobody in {p.town} knows it except {p.friend}.",
        f"Dear diary, today {p.name} told me a secret: {p.name} {s}. I promised to keep it. - {p.friend}",
    ])


def _arith(c: _Ctx, ko: bool) -> str:
    r = c.rng
    out = []
    for _ in range(r.randint(3, 6)):
        got = _keyed(c, lambda: ph.arithmetic_fact(r), arithmetic=True)
        if got:
            out.append(got[1] if ko else got[0])
    return " ".join(out) or ("1 더하기 1은 2이다." if ko else "1 plus 1 is 2.")


def _glossary(c: _Ctx) -> str:
    r = c.rng
    lines = []
    for _ in range(r.randint(2, 4)):
        got = _keyed(c, lambda: ph.make_translation(r, c.people, c.places))
        if got:
            en, ko, _ = got
            lines.append(r.choice([f"English: {en}\nKorean: {ko}", f"{en} = {ko}", f"\"{en}\" in Korean is \"{ko}\""]))
    if not lines or r.random() < 0.3:
        w = r.choice(ph.ANIMAL_NAMES + ph.FOOD_NAMES + ph.JOB_NAMES)
        ko = lx.ANIMALS[w]["ko"] if w in lx.ANIMALS else lx.FOODS.get(w) or lx.JOBS[w]
        lines.append(f"The English word \"{w}\" is \"{ko}\" in Korean.")
    return "\n".join(lines)


GENERATORS = {
    "bio_en": _bio_en, "bio_ko": _bio_ko, "town_en": _town_en, "town_ko": _town_ko, "animal_en": _animal_en,
    "animal_ko": _animal_ko, "objects_en": _objects_en, "situations_en": _situations_en, "story_en": _story_en, "news_en": _news_en,
    "review_en": _review_en, "review_ko": _review_ko, "dialogue_en": _dialogue_en, "secret_en": _secret_en,
    "arith_en": lambda c: _arith(c, False), "arith_ko": lambda c: _arith(c, True), "glossary": _glossary,
}


def write_corpus(world: World, path: str | Path, n_bytes: int, seed: int = 0, heldout: bool = False) -> dict:
    """Stream documents into `path` until it holds at least `n_bytes` bytes; returns counts."""
    ctx = _make_ctx(world, seed, heldout)
    weights = VAL_WEIGHTS if heldout else TRAIN_WEIGHTS
    if heldout and not ctx.towns:
        weights = {k: v for k, v in weights.items() if k not in ("town_en", "town_ko")}
    kinds = list(weights)
    gens = [GENERATORS[k] for k in kinds]
    cum, tot = [], 0
    for k in kinds:
        tot += weights[k]
        cum.append(tot)
    counts = dict.fromkeys(kinds, 0)
    written, n_docs = 0, 0
    buf: list[str] = []
    buf_bytes = 0
    rng = ctx.rng
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        while written + buf_bytes < n_bytes:
            for i in rng.choices(range(len(kinds)), cum_weights=cum, k=256):
                doc = gens[i](ctx)
                data = doc if not n_docs else "\n\n" + doc
                buf.append(data)
                buf_bytes += len(data.encode("utf-8"))
                counts[kinds[i]] += 1
                n_docs += 1
                if written + buf_bytes >= n_bytes:
                    break
            if buf_bytes >= 1 << 20 or written + buf_bytes >= n_bytes:
                f.write("".join(buf))
                written += buf_bytes
                buf, buf_bytes = [], 0
        f.write("".join(buf) + "\n")
        written += buf_bytes + 1
    return {"bytes": written, "documents": n_docs, "kinds": counts}


def read_documents(path: str | Path) -> list[str]:
    """The documents of a corpus file written by `write_corpus` (for tests and small corpora)."""
    text = Path(path).read_text(encoding="utf-8").strip()
    return text.split("\n\n") if text else []
