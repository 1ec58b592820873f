"""A small seeded world: people, their pets, towns, countries and rivers.

Every fact the corpus states and every question the tasks ask is read from here, so ground truth
is one lookup away. Entities carry a split (train / validation / test / heldout):
- train, validation, test people and towns appear in the pretraining corpus (closed-book questions
  about them are answerable), and the instruction items about them land in that task split;
- heldout people and towns appear only in corpus/val.txt, so perplexity there is measured on
  facts the model never saw.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmstack.errors import LmstackError

from . import lexicon as lx

SPLITS = ("train", "validation", "test", "heldout")
SPLIT_FRACTIONS = (0.7, 0.1, 0.1, 0.1)
WORLD_VERSION = 1


@dataclass
class Person:
    name: str
    name_ko: str
    age: int
    town: str
    job: str
    food: str
    secret: int  # index into lexicon.SECRETS
    pet_name: str
    pet_name_ko: str
    pet_species: str
    pet_colour: str
    friend: str
    split: str


@dataclass
class Town:
    name: str
    name_ko: str
    country: str
    river: str  # the river's stem: "Miru" for "the Miru River"
    population: int
    split: str


@dataclass
class Named:
    name: str
    name_ko: str


# QA relations: relation -> answer type. The answer type names the set of values a wrong answer
# would come from (a different town, a different job...), which the judge uses to spot
# hallucinations.
PERSON_RELATIONS = {"town": "town", "job": "job", "pet_species": "species", "pet_name": "pet_name",
                    "food": "food", "age": "age"}
TOWN_RELATIONS = {"country": "country", "river": "river", "population": "population"}


@dataclass
class World:
    seed: int
    people: list[Person]
    towns: list[Town]
    countries: list[Named]
    rivers: list[Named]
    version: int = WORLD_VERSION
    _by_name: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self._index()

    def _index(self):
        self._by_name = {}
        for group in (self.people, self.towns, self.countries, self.rivers):
            for e in group:
                self._by_name[e.name] = e
        self._ko = {e.name: e.name_ko for g in (self.people, self.towns, self.countries, self.rivers) for e in g}
        self._ko.update({p.pet_name: p.pet_name_ko for p in self.people})
        self._cands: dict = {}

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def generate(cls, seed: int = 0, n_people: int = 80, n_towns: int | None = None) -> World:
        """Build a world deterministically from `seed` (same arguments -> same world)."""
        if n_people < 20:
            raise LmstackError(f"world: n_people must be at least 20, got {n_people}")
        rng = random.Random(f"world:{seed}")
        n_towns = n_towns or max(16, n_people // 8)
        names = _NameMaker(rng)
        countries = [Named(*names.make(2, lx.COUNTRY_SUFFIXES)) for _ in range(max(3, n_towns // 4))]
        rivers = [Named(*names.make(2)) for _ in range(max(4, n_towns // 2))]
        town_splits = _assign_splits(rng, n_towns)
        towns = []
        for i in range(n_towns):
            en, ko = names.make(2, lx.TOWN_SUFFIXES)
            towns.append(Town(en, ko, rng.choice(countries).name, rng.choice(rivers).name,
                              rng.randint(3, 400) * 100, town_splits[i]))
        # Heldout people may live anywhere; the others live in non-heldout towns, so the
        # training corpus never has to name a heldout town.
        visible_towns = [t.name for t in towns if t.split != "heldout"]
        all_towns = [t.name for t in towns]
        person_splits = _assign_splits(rng, n_people)
        people = []
        for i in range(n_people):
            en, ko = names.make(3)
            pen, pko = names.make(2)
            split = person_splits[i]
            people.append(Person(
                name=en, name_ko=ko, age=rng.randint(18, 80),
                town=rng.choice(all_towns if split == "heldout" else visible_towns),
                job=rng.choice(sorted(lx.JOBS)), food=rng.choice(sorted(lx.FOODS)),
                secret=rng.randrange(len(lx.SECRETS)), pet_name=pen, pet_name_ko=pko,
                pet_species=rng.choice(lx.PET_SPECIES), pet_colour=rng.choice(sorted(lx.COLOURS)),
                friend="", split=split))
        # Friends stay on the same side of the heldout line for the same reason as towns.
        sides = {True: [q for q in people if q.split == "heldout"], False: [q for q in people if q.split != "heldout"]}
        for p in people:
            side = sides[p.split == "heldout"]
            friend = p
            while friend is p:
                friend = rng.choice(side)
            p.friend = friend.name
        return cls(seed=seed, people=people, towns=towns, countries=countries, rivers=rivers)

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"version": self.version, "seed": self.seed,
                "people": [asdict(p) for p in self.people], "towns": [asdict(t) for t in self.towns],
                "countries": [asdict(c) for c in self.countries], "rivers": [asdict(r) for r in self.rivers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> World:
        try:
            return cls(seed=d["seed"], people=[Person(**p) for p in d["people"]],
                       towns=[Town(**t) for t in d["towns"]], countries=[Named(**c) for c in d["countries"]],
                       rivers=[Named(**r) for r in d["rivers"]], version=d.get("version", WORLD_VERSION))
        except (KeyError, TypeError) as e:
            raise LmstackError(f"world: malformed world description ({e})") from e

    @classmethod
    def from_json(cls, src: str | Path | dict) -> World:
        """Accepts a dict, a JSON string, or a path to world.json."""
        if isinstance(src, dict):
            return cls.from_dict(src)
        text = str(src)
        if not text.lstrip().startswith("{"):
            path = Path(text)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as e:
                raise LmstackError(f"{path}: cannot read world file ({e.strerror})") from e
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise LmstackError(f"world: invalid JSON at line {e.lineno}: {e.msg}") from e

    # ---- lookups ------------------------------------------------------------------------
    def get(self, name: str):
        return self._by_name[name]

    def ko(self, name: str) -> str:
        """Korean spelling of any entity or pet name."""
        return self._ko[name]

    def pool(self, split: str) -> list[Person]:
        return [p for p in self.people if p.split == split]

    def town_pool(self, split: str) -> list[Town]:
        return [t for t in self.towns if t.split == split]

    def residents(self, town: str, heldout: bool) -> list[Person]:
        return [p for p in self.people if p.town == town and (p.split == "heldout") == heldout]

    def fact(self, subject: str, relation: str) -> tuple[str, str, str]:
        """(English value, Korean value, answer type) of `relation` for a person or town."""
        e = self._by_name[subject]
        if relation == "town":
            return e.town, self.ko(e.town), "town"
        if relation == "job":
            return e.job, lx.JOBS[e.job], "job"
        if relation == "pet_species":
            return e.pet_species, lx.ANIMALS[e.pet_species]["ko"], "species"
        if relation == "pet_name":
            return e.pet_name, e.pet_name_ko, "pet_name"
        if relation == "food":
            return e.food, lx.FOODS[e.food], "food"
        if relation == "age":
            return str(e.age), str(e.age), "age"
        if relation == "country":
            return e.country, self.ko(e.country), "country"
        if relation == "river":
            return f"the {e.river} River", f"{self.ko(e.river)} 강", "river"
        if relation == "population":
            return str(e.population), str(e.population), "population"
        raise KeyError(relation)

    def candidates(self, answer_type: str, lang: str = "en", heldout: bool = True) -> list[str]:
        """Every value an answer of `answer_type` could take (for distractors and for the judge).

        heldout=False leaves out heldout towns and heldout people's pets, whose names must not
        appear in training text."""
        key = (answer_type, lang, heldout)
        if key not in self._cands:
            ko = lang == "ko"
            towns = [t for t in self.towns if heldout or t.split != "heldout"]
            people = [p for p in self.people if heldout or p.split != "heldout"]
            if answer_type == "town":
                vals = [t.name_ko if ko else t.name for t in towns]
            elif answer_type == "job":
                vals = list(lx.JOBS.values()) if ko else list(lx.JOBS)
            elif answer_type == "species":
                vals = [lx.ANIMALS[s]["ko"] if ko else s for s in lx.PET_SPECIES]
            elif answer_type == "pet_name":
                vals = [p.pet_name_ko if ko else p.pet_name for p in people]
            elif answer_type == "food":
                vals = list(lx.FOODS.values()) if ko else list(lx.FOODS)
            elif answer_type == "country":
                vals = [c.name_ko if ko else c.name for c in self.countries]
            elif answer_type == "river":
                vals = [f"{r.name_ko} 강" if ko else f"the {r.name} River" for r in self.rivers]
            elif answer_type in ("age", "population", "number"):
                vals = []  # numbers: any other number contradicts
            else:
                raise KeyError(answer_type)
            self._cands[key] = vals
        return self._cands[key]


def _assign_splits(rng: random.Random, n: int) -> list[str]:
    """Split labels for n entities in the SPLIT_FRACTIONS proportions, each split non-empty."""
    counts = [max(1, round(n * f)) for f in SPLIT_FRACTIONS[1:]]
    labels = ["validation"] * counts[0] + ["test"] * counts[1] + ["heldout"] * counts[2]
    labels = ["train"] * (n - len(labels)) + labels
    rng.shuffle(labels)
    return labels


class _NameMaker:
    """Unique names from syllables, spelled in Latin and Hangul (unique in both scripts)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set(lx.JOBS) | set(lx.FOODS) | set(lx.ANIMALS) | set(lx.COUNTABLES) | lx.BLOCKED_NAMES
        self.used_ko: set[str] = set(lx.JOBS.values()) | set(lx.FOODS.values())

    def make(self, n_syl: int, suffixes=None) -> tuple[str, str]:
        for _ in range(10_000):
            parts = [self.rng.choice(lx.OPEN_SYLLABLES) for _ in range(n_syl)]
            if suffixes is None and self.rng.random() < 0.3:
                parts[-1] = self.rng.choice(lx.CLOSED_SYLLABLES)
            if suffixes is not None:
                parts.append(self.rng.choice(suffixes))
            en = "".join(p[0] for p in parts).capitalize()
            ko = "".join(p[1] for p in parts)
            if en.lower() not in self.used and ko not in self.used_ko:
                self.used.add(en.lower())
                self.used_ko.add(ko)
                return en, ko
        raise LmstackError("world: ran out of unique names; use fewer people")
