"""Sentences about the world, shared by the corpus and the tasks.

The corpus states facts with these phrasings and the tasks ask about them with the same
vocabulary, so what pretraining stores is what instruction tuning and evaluation probe.
Generic items (reviews, arithmetic, translation sentences, stories) get a key, and `key_split`
assigns each key to one split by a seeded hash: a test item's key never produces training text.
"""

from __future__ import annotations

import hashlib
import math
import random

from . import lexicon as lx
from .lexicon import article, josa
from .world import Person, Town, World

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ANIMAL_NAMES = sorted(lx.ANIMALS)
ADJ_NAMES = sorted(lx.ADJECTIVES)
COLOUR_NAMES = sorted(lx.COLOURS)
FOOD_NAMES = sorted(lx.FOODS)
PLACE_NAMES = sorted(lx.PLACES)
JOB_NAMES = sorted(lx.JOBS)
COUNTABLE_NAMES = sorted(lx.COUNTABLES)
SHOP_KO_NAMES = sorted(lx.SHOPS_KO)
EVENT_ITEMS = {"buy": COUNTABLE_NAMES, "sell": COUNTABLE_NAMES, "bake": ["cookies", "cakes", "pies", "loaves of bread"],
               "plant": ["apple trees", "pear trees", "roses", "sunflowers"]}
WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "quiet", "cloudy"]


def key_split(seed: int, key: str) -> str:
    """train / validation / test / heldout for a generic item, stable across runs and platforms.

    heldout keys never appear in tasks; they are kept for corpus/val.txt (perplexity)."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=8).digest(), "little") % 100
    return "train" if h < 75 else "validation" if h < 83 else "test" if h < 91 else "heldout"


# ---- people and towns -----------------------------------------------------------------------
def person_forms_en(world: World, p: Person) -> dict[str, list[str]]:
    """English sentences stating each fact of `p`, several phrasings each (same meaning)."""
    n, sp, col = p.name, p.pet_species, p.pet_colour
    return {
        "town": [f"{n} lives in {p.town}.", f"{p.town} is where {n} lives.", f"{n}'s home is in {p.town}.",
                 f"{n} has a home in {p.town}."],
        "job": [f"{n} is {article(p.job)}.", f"{n} works as {article(p.job)}.", f"{n}'s job is being {article(p.job)}.",
                f"By profession, {n} is {article(p.job)}."],
        "pet": [f"{n} has {article(col)} {sp} named {p.pet_name}.", f"{n} owns {article(col)} {sp} called {p.pet_name}.",
                f"{p.pet_name} is {n}'s {col} {sp}.", f"{n}'s {col} {sp} is named {p.pet_name}."],
        "food": [f"{n}'s favourite food is {p.food}.", f"{n} likes {p.food} more than any other food.",
                 f"Of all foods, {n} likes {p.food} best.",
                 f"{p.food.capitalize()} {'are' if lx.is_plural(p.food) else 'is'} {n}'s favourite food."],
        "age": [f"{n} is {p.age} years old.", f"{n} is {p.age}.", f"{n}'s age is {p.age}.",
                f"{n} is {lx.a_num(p.age)} {p.age}-year-old."],
    }


def person_forms_ko(world: World, p: Person) -> dict[str, list[str]]:
    n, town = p.name_ko, world.ko(p.town)
    job, food = lx.JOBS[p.job], lx.FOODS[p.food]
    sp, col, pet = lx.ANIMALS[p.pet_species]["ko"], lx.COLOURS[p.pet_colour][0], p.pet_name_ko
    return {
        "town": [f"{josa(n, 'topic')} {town}에 산다.", f"{n}의 집은 {town}에 있다.", f"{josa(n, 'subj')} 사는 곳은 {josa(town, 'cop')}."],
        "job": [f"{n}의 직업은 {josa(job, 'cop')}.", f"{josa(n, 'topic')} {josa(job, 'dir')} 일한다.", f"{josa(n, 'topic')} {josa(job, 'cop')}."],
        "pet": [f"{josa(n, 'topic')} {josa(pet, 'named')} 이름의 {col} {josa(sp, 'obj')} 키운다.",
                f"{josa(pet, 'topic')} {n}의 {col} {josa(sp, 'cop')}."],
        "food": [f"{josa(n, 'subj')} 가장 좋아하는 음식은 {josa(food, 'cop')}.", f"{josa(n, 'topic')} {josa(food, 'obj')} 제일 좋아한다."],
        "age": [f"{josa(n, 'topic')} {p.age}살이다.", f"{n}의 나이는 {p.age}살이다."],
    }


def person_intro_en(p: Person) -> list[str]:
    return [f"{p.name} is {lx.a_num(p.age)} {p.age}-year-old {p.job} who lives in {p.town}.",
            f"{p.name} ({p.age}) is {article(p.job)} from {p.town}.",
            f"{p.name} is {article(p.job)} in {p.town}."]


def person_intro_ko(world: World, p: Person) -> list[str]:
    n, town, job = p.name_ko, world.ko(p.town), lx.JOBS[p.job]
    return [f"{josa(n, 'topic')} {town}에 사는 {p.age}살 {josa(job, 'cop')}.",
            f"{josa(n, 'topic')} {town}에서 일하는 {josa(job, 'cop')}."]


def town_forms_en(world: World, t: Town) -> dict[str, list[str]]:
    return {
        "country": [f"{t.name} is a town in {t.country}.", f"The town of {t.name} lies in {t.country}.",
                    f"{t.name} is in {t.country}."],
        "river": [f"The {t.river} River flows through {t.name}.", f"{t.name} lies on the {t.river} River.",
                  f"The river in {t.name} is the {t.river} River."],
        "population": [f"About {t.population} people live in {t.name}.", f"{t.name} has a population of {t.population}.",
                       f"The population of {t.name} is {t.population}."],
    }


def town_forms_ko(world: World, t: Town) -> dict[str, list[str]]:
    n, c, r = t.name_ko, world.ko(t.country), world.ko(t.river)
    return {
        "country": [f"{josa(n, 'topic')} {c}에 있는 마을이다.", f"{josa(n, 'topic')} {c}에 있다."],
        "river": [f"{n} 옆으로 {r} 강이 흐른다.", f"{n}에는 {r} 강이 흐른다."],
        "population": [f"{n}의 인구는 {t.population}명이다.", f"{n}에는 약 {t.population}명이 산다."],
    }


def person_record(world: World, p: Person, fields: list[str]) -> tuple[str, str, list[str]]:
    """(structured record, canonical sentence, values it must mention) for struct-to-text."""
    vals = {"name": p.name, "age": str(p.age), "job": p.job, "town": p.town, "pet": f"{p.pet_species} {p.pet_name}",
            "food": p.food}
    rec = ", ".join(f"{k}[{vals[k]}]" for k in ["name"] + fields)
    f = set(fields)
    head = p.name + " is"
    if "age" in f and "job" in f:
        head += f" {lx.a_num(p.age)} {p.age}-year-old {p.job}"
    elif "job" in f:
        head += f" {article(p.job)}"
    elif "age" in f:
        head += f" {p.age} years old"
    else:
        head = p.name
    clauses = []
    if "town" in f:
        clauses.append(f"lives in {p.town}")
    if "pet" in f:
        clauses.append(f"has {article(p.pet_species)} named {p.pet_name}")
    if "food" in f:
        clauses.append(f"likes {p.food} best")
    if head == p.name:
        sent = f"{p.name} " + " and ".join(clauses) + "."
    elif clauses:
        sent = f"{head} who " + " and ".join(clauses) + "."
    else:
        sent = head + "."
    keys = [p.name] + [vals[k] if k != "pet" else p.pet_name for k in fields]
    return rec, sent, keys


def town_record(t: Town, fields: list[str]) -> tuple[str, str, list[str]]:
    vals = {"name": t.name, "country": t.country, "river": f"{t.river} River", "population": str(t.population)}
    rec = ", ".join(f"{k}[{vals[k]}]" for k in ["name"] + fields)
    f = set(fields)
    sent = f"{t.name} is a town"
    if "country" in f:
        sent += f" in {t.country}"
    if "river" in f:
        sent += f" on the {t.river} River"
    if "population" in f:
        sent += f" with a population of {t.population}"
    return rec, sent + ".", [vals[k] for k in ["name"] + fields]


# ---- events: stories (summarisation) and news ------------------------------------------------
def make_event(rng: random.Random, world: World, p: Person, towns: list[Town]) -> dict:
    kind = rng.choice(["buy", "sell", "bake", "visit", "lost_pet", "plant"])
    ev = {"kind": kind, "name": p.name, "home": p.town, "job": p.job, "friend": p.friend, "pet": p.pet_name,
          "species": p.pet_species, "day": rng.choice(DAYS), "weather": rng.choice(WEATHER)}
    if kind in ("buy", "sell"):
        ev.update(q=rng.randint(2, 12), item=rng.choice(COUNTABLE_NAMES), town=rng.choice(towns).name)
    elif kind == "bake":
        ev.update(q=rng.randint(3, 24), item=rng.choice(EVENT_ITEMS["bake"]))
    elif kind == "visit":
        ev.update(town=rng.choice(towns).name, q=rng.randint(2, 5))
    elif kind == "lost_pet":
        ev.update(place=rng.choice(["garden", "park", "forest", "market", "school", "kitchen"]))
    else:
        ev.update(q=rng.randint(2, 9), item=rng.choice(EVENT_ITEMS["plant"]))
    return ev


def event_key(ev: dict) -> str:
    return "|".join(str(ev.get(k, "")) for k in ("kind", "name", "q", "item", "town", "place"))


def event_summary(ev: dict) -> tuple[str, list[str]]:
    """(one-sentence summary, words a good summary must contain)."""
    n, k = ev["name"], ev["kind"]
    if k == "buy":
        return f"{n} bought {ev['q']} {ev['item']} at the market in {ev['town']}.", [n, "bought", str(ev["q"]), ev["item"]]
    if k == "sell":
        return f"{n} sold {ev['q']} {ev['item']} at the market in {ev['town']}.", [n, "sold", str(ev["q"]), ev["item"]]
    if k == "bake":
        return f"{n} baked {ev['q']} {ev['item']} for {ev['friend']}.", [n, "baked", str(ev["q"]), ev["friend"]]
    if k == "visit":
        return f"{n} visited {ev['friend']} in {ev['town']}.", [n, "visited", ev["friend"], ev["town"]]
    if k == "lost_pet":
        return f"{n} lost {ev['pet']} and found it in the {ev['place']}.", [n, "lost", ev["pet"], ev["place"]]
    return f"{n} planted {ev['q']} {ev['item']} in the garden.", [n, "planted", str(ev["q"]), ev["item"]]


def story_text(rng: random.Random, ev: dict) -> str:
    n, d, w = ev["name"], ev["day"], ev["weather"]
    intro = rng.choice([f"On {d} morning, {n} woke up early in {ev['home']}.", f"It was a {w} {d} in {ev['home']}.",
                        f"{n} the {ev['job']} had a busy {d}.", f"{d} was a {w} day, and {n} had a plan."])
    k = ev["kind"]
    if k == "buy":
        body = [f"{n} walked to the market in {ev['town']} with a big basket.", f"There, {n} bought {ev['q']} {ev['item']}.",
                f"The {ev['item']} looked {rng.choice(['nice', 'good', 'cheap'])}, so {n} was pleased."]
    elif k == "sell":
        body = [f"{n} took a cart to the market in {ev['town']}.", f"By noon, {n} had sold {ev['q']} {ev['item']}.",
                f"The buyers {rng.choice(['were happy', 'paid well', 'asked for more'])}."]
    elif k == "bake":
        body = [f"{ev['friend']} was having a party that evening.", f"{n} stayed in the kitchen all afternoon and baked {ev['q']} {ev['item']}.",
                f"{n} carried them to {ev['friend']}'s house {rng.choice(['carefully', 'with a smile', 'before dark'])}."]
    elif k == "visit":
        body = [f"{n} took the {rng.choice(['bus', 'train', 'boat'])} to {ev['town']}.",
                f"There, {n} visited {ev['friend']}, an old friend.", f"They talked for {ev['q']} hours."]
    elif k == "lost_pet":
        body = [f"When {n} opened the door, {ev['pet']} the {ev['species']} ran outside.", f"{n} looked everywhere for {ev['pet']}.",
                f"At last, {n} found {ev['pet']} in the {ev['place']}."]
    else:
        body = [f"{n} took a shovel into the garden.", f"{n} dug holes and planted {ev['q']} {ev['item']}.",
                f"Then {n} watered them {rng.choice(['slowly', 'twice', 'with care'])}."]
    end = rng.choice([f"In the evening, {n} felt happy.", "It was a good day.", f"Then {n} went home and rested.",
                      f"{n} will remember that {d}."])
    return " ".join([intro] + body + [end])


def make_news(rng: random.Random, world: World, t: Town, people: list[Person]) -> tuple[str, str, list[str], str]:
    """(report, headline-like summary, key words, key) about an event in town `t`."""
    p = rng.choice(people)
    d = rng.choice(DAYS)
    kind = rng.choice(["festival", "bridge", "race"])
    c = world.get(t.country).name
    if kind == "festival":
        thing, dish = rng.choice([("bread", "loaf"), ("apple", "apple pie"), ("cheese", "cheese"), ("soup", "soup"),
                                  ("honey", "honey cake")])
        text = (f"The town of {t.name} held a {thing} festival on {d}. More than {rng.randint(2, 9) * 100} people came "
                f"from all over {c}. {p.name}, a local {p.job}, won the prize for the best {dish}. "
                f"\"I did not expect to win,\" said {p.name}.")
        summ = f"{p.name} won the prize for the best {dish} at the {thing} festival in {t.name}."
        keys = [p.name, "won", dish, t.name]
    elif kind == "bridge":
        text = (f"A new bridge over the {t.river} River opened in {t.name} on {d}. It took {rng.randint(2, 6)} years to build. "
                f"{p.name}, {article(p.job)}, was the first person to cross it. The people of {t.name} are very proud.")
        summ = f"A new bridge over the {t.river} River opened in {t.name}."
        keys = ["bridge", t.river, t.name, "opened"]
    else:
        text = (f"The boat race on the {t.river} River took place in {t.name} on {d}. {rng.randint(5, 30)} boats started the race. "
                f"{p.name}, {article(p.job)} from {p.town}, crossed the line first. Everyone cheered.")
        summ = f"{p.name} won the boat race on the {t.river} River in {t.name}."
        keys = [p.name, "won", "race", t.name]
    return text, summ, keys, f"news|{kind}|{t.name}|{p.name}|{keys[2]}"


# ---- reviews ---------------------------------------------------------------------------------
def make_review_en(rng: random.Random) -> tuple[str, str, str]:
    """(review text, label, key) with label 'positive' or 'negative'."""
    pos = rng.random() < 0.5
    i = 0 if pos else 1
    shop = rng.choice(lx.SHOPS_EN)
    aspects = rng.sample(lx.REVIEW_ASPECTS_EN[shop] + lx.REVIEW_COMMON_EN, 3)
    # One aspect may go against the overall verdict, as real reviews do; the rest agree.
    mixed = rng.random() < 0.3
    sents = [rng.choice(lx.REVIEW_OPEN_EN[i]).format(shop=shop)]
    sents += [a[1 - i] if (mixed and j == 2) else a[i] for j, a in enumerate(aspects[: 2 + mixed])]
    sents.append(rng.choice(lx.REVIEW_CLOSE_EN[i]))
    text = " ".join(sents)
    return text, "positive" if pos else "negative", "rev|" + text


def make_review_ko(rng: random.Random) -> tuple[str, str, str]:
    pos = rng.random() < 0.5
    i = 0 if pos else 1
    shop_key = rng.choice(SHOP_KO_NAMES)
    shop = lx.SHOPS_KO[shop_key]
    aspects = rng.sample(lx.REVIEW_ASPECTS_KO[shop_key] + lx.REVIEW_COMMON_KO, 3)
    mixed = rng.random() < 0.3
    opener = rng.choice(lx.REVIEW_OPEN_KO[i])
    opener = opener.format(shop=shop, subj=josa(shop, "subj")[len(shop):], topic=josa(shop, "topic")[len(shop):],
                           cop=josa(shop, "cop")[len(shop):])
    sents = [opener]
    sents += [a[1 - i] if (mixed and j == 2) else a[i] for j, a in enumerate(aspects[: 2 + mixed])]
    sents.append(rng.choice(lx.REVIEW_CLOSE_KO[i]))
    text = " ".join(sents)
    return text, "positive" if pos else "negative", "rev|" + text


# ---- translation sentences -------------------------------------------------------------------
def make_translation(rng: random.Random, people: list[Person], towns: list[Town], k: int | None = None) -> tuple[str, str, str]:
    """(English sentence, Korean sentence, key) from the world lexicon and one of 12 simple
    patterns (`k`, random if None); the key names the pattern and its slot fillers."""
    k = rng.randrange(12) if k is None else k
    an = rng.choice(ANIMAL_NAMES)
    an_ko = lx.ANIMALS[an]["ko"]
    if k == 0:
        adj = rng.choice(ADJ_NAMES)
        return f"The {an} is {adj}.", f"{josa(an_ko, 'topic')} {lx.ADJECTIVES[adj][0]}.", f"t0|{an}|{adj}"
    if k == 1:
        col = rng.choice(COLOUR_NAMES)
        return f"The {an} is {col}.", f"{josa(an_ko, 'topic')} {lx.COLOURS[col][1]}.", f"t1|{an}|{col}"
    if k == 2:
        food = rng.choice(FOOD_NAMES)
        return f"The {an} eats {food}.", f"{josa(an_ko, 'topic')} {josa(lx.FOODS[food], 'obj')} 먹는다.", f"t2|{an}|{food}"
    if k == 3:
        col = rng.choice(COLOUR_NAMES)
        return (f"I see {article(col)} {an}.", f"나는 {lx.COLOURS[col][0]} {josa(an_ko, 'obj')} 본다.", f"t3|{an}|{col}")
    if k == 8:
        adj = rng.choice(ADJ_NAMES)
        return (f"The {adj} {an} is sleeping.", f"{lx.ADJECTIVES[adj][1]} {josa(an_ko, 'subj')} 자고 있다.", f"t8|{an}|{adj}")
    if k == 10:
        pl = rng.choice(PLACE_NAMES)
        return f"The {an} is in the {pl}.", f"{josa(an_ko, 'topic')} {lx.PLACES[pl]}에 있다.", f"t10|{an}|{pl}"
    p = rng.choice(people)
    n, n_ko = p.name, p.name_ko
    if k == 4:
        food = rng.choice(FOOD_NAMES)
        return f"{n} likes {food}.", f"{josa(n_ko, 'topic')} {josa(lx.FOODS[food], 'obj')} 좋아한다.", f"t4|{n}|{food}"
    if k == 5:
        t = rng.choice(towns)
        return f"{n} lives in {t.name}.", f"{josa(n_ko, 'topic')} {t.name_ko}에 산다.", f"t5|{n}|{t.name}"
    if k == 6:
        job = rng.choice(JOB_NAMES)
        return f"{n} is {article(job)}.", f"{josa(n_ko, 'topic')} {josa(lx.JOBS[job], 'cop')}.", f"t6|{n}|{job}"
    if k == 7:
        return f"{n} has {article(an)}.", f"{josa(n_ko, 'topic')} {josa(an_ko, 'obj')} 키운다.", f"t7|{n}|{an}"
    pl = rng.choice(PLACE_NAMES)
    if k == 9:
        return f"{n} goes to the {pl}.", f"{josa(n_ko, 'topic')} {lx.PLACES[pl]}에 간다.", f"t9|{n}|{pl}"
    return f"{n} reads a book in the {pl}.", f"{josa(n_ko, 'topic')} {lx.PLACES[pl]}에서 책을 읽는다.", f"t11|{n}|{pl}"


# ---- arithmetic ------------------------------------------------------------------------------
def arithmetic_fact(rng: random.Random) -> tuple[str, str, str]:
    """(English statement, Korean statement, key) of one arithmetic fact."""
    op = rng.randrange(5)
    if op == 0:
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        c = a + b
        return f"{a} plus {b} is {c}.", f"{a} 더하기 {josa(str(b), 'topic')} {josa(str(c), 'cop')}.", f"add|{a}|{b}"
    if op == 1:
        a = rng.randint(0, 99)
        b = rng.randint(0, a)
        c = a - b
        return f"{a} minus {b} is {c}.", f"{a} 빼기 {josa(str(b), 'topic')} {josa(str(c), 'cop')}.", f"sub|{a}|{b}"
    if op == 2:
        a, b = rng.randint(1, 12), rng.randint(1, 12)
        c = a * b
        return f"{a} times {b} is {c}.", f"{a} 곱하기 {josa(str(b), 'topic')} {josa(str(c), 'cop')}.", f"mul|{a}|{b}"
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    if op == 3:
        g = math.gcd(a, b)
        return (f"The greatest common divisor of {a} and {b} is {g}.",
                f"{josa(str(a), 'and')} {b}의 최대공약수는 {josa(str(g), 'cop')}.", f"gcd|{a}|{b}")
    m = a * b // math.gcd(a, b)
    return (f"The least common multiple of {a} and {b} is {m}.",
            f"{josa(str(a), 'and')} {b}의 최소공배수는 {josa(str(m), 'cop')}.", f"lcm|{a}|{b}")
