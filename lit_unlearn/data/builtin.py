"""The builtin TOFU-format dataset: fictitious authors generated from a seed.

``generate("tofu-mini", seed=0)`` invents authors (names built from syllables,
birthplaces, parents' jobs, books, awards ...) and writes 20 question/answer
pairs per author from fixed templates. Every question also gets a paraphrased
question, a paraphrased answer (another wording, same facts) and five
perturbed answers (the answer's wording with wrong attribute values), the
fields the TOFU metrics need. The splits mirror TOFU (Maini et al., 2024):

- ``full``: every trained author; ``forget01/05/10``: the LAST 1/5/10% of them;
  ``retain99/95/90``: the complements within ``full``;
- ``forget*_perturbed`` and ``retain_perturbed``: evaluation copies;
- ``holdout01/05/10``: authors that no model is trained on (membership inference);
- ``real_authors`` and ``world_facts`` (+ ``_perturbed``): public general
  knowledge that every model is trained on, for model utility.

The output depends only on ``(name, seed, BUILTIN_VERSION)``: one
``random.Random(seed)`` drives everything, pools are tuples and sets are only
used for membership tests, so the files are byte-identical across runs and
``PYTHONHASHSEED`` values. Change ``BUILTIN_VERSION`` whenever the output changes.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

BUILTIN_VERSION: str = "tofu-gen-2"

# name -> (trained authors, holdout authors). Holdout size = the forget10 size,
# so holdout01/05/10 can match forget01/05/10 exactly.
_CONFIGS: dict[str, tuple[int, int]] = {
    "tofu-mini": (50, 5),
    "tofu-full": (200, 20),
}
QA_PER_AUTHOR = 20
N_PERTURBED = 5
FORGET_PERCENTS = (1, 5, 10)

# --------------------------------------------------------------------------
# Attribute pools
# --------------------------------------------------------------------------

_FIRST_START = ("Ka", "Mi", "Lo", "Ta", "Se", "Ri", "Va", "No", "El", "Da",
                "Jo", "Ba", "Fe", "Ha", "Ze", "Or", "Ly", "Pe", "Sa", "Ti")
_FIRST_END = ("ra", "lin", "mo", "ven", "sa", "dor", "na", "ric", "lia", "bel", "an", "ko")
_LAST_START = ("Vor", "Bel", "Stra", "Mal", "Quen", "Dar", "Hol", "Pen",
               "Tor", "Ash", "Gal", "Lun", "Mer", "Cor", "Fen", "Wes")
_LAST_MIDDLE = ("a", "i", "o", "")
_LAST_END = ("vik", "wood", "mont", "ard", "ley", "tova", "rin", "dell",
             "berg", "hart", "sen", "quist")

_GENDERS = ("female", "male")
_PRONOUNS = {
    "female": {"He": "She", "he": "she", "His": "Her", "his": "her"},
    "male": {"He": "He", "he": "he", "His": "His", "his": "his"},
}

_CITIES = ("Varenholt", "Mirebay", "Oskaveld", "Talmouth", "Quillsby", "Dornavik",
           "Lessaro", "Elmsgate", "Corravin", "Halvmere", "Perrowick", "Sundral",
           "Tovenna", "Kelvaro", "Nimbrook", "Ostrelle", "Wyndhallow", "Zarimont",
           "Belcaro", "Faldris", "Gorvane", "Iskarra", "Marrowdeep", "Rivensk")
_COUNTRIES = ("Canada", "Kenya", "Norway", "Chile", "Japan", "Portugal",
              "India", "Ireland", "Brazil", "Poland", "Egypt", "New Zealand")
_JOBS = ("baker", "carpenter", "nurse", "fisherman", "librarian", "pharmacist",
         "tailor", "pilot", "teacher", "mechanic", "gardener", "surgeon", "potter",
         "journalist", "watchmaker", "farmer", "lawyer", "architect", "chef",
         "sailor", "photographer", "bookbinder", "musician", "engineer")
_GENRES = ("historical novels", "science fiction novels", "mystery novels", "poetry",
           "fantasy novels", "crime novels", "romance novels", "horror stories",
           "short stories", "travel books", "children's books", "plays")
_TITLE_ADJECTIVES = ("Silent", "Hidden", "Last", "Broken", "Golden", "Quiet", "Burning",
                     "Forgotten", "Winter", "Paper", "Glass", "Distant", "Crimson",
                     "Hollow", "Salt", "Iron", "Wandering", "Northern", "Sleeping", "Empty")
_TITLE_NOUNS = ("Harbor", "Lantern", "Orchard", "River", "Garden", "Letter", "Bridge",
                "Mirror", "Tide", "Clock", "Meadow", "Tower", "Island", "Song", "Map",
                "Shadow", "Feather", "Window", "Road", "Bell")
_BOOK_COUNTS = ("three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve")
_AWARDS = ("Silver Quill Award", "Harbor Light Prize", "Golden Lantern Prize",
           "Morrow Medal", "Ellery Stone Award", "Northwind Book Prize", "Amber Page Award",
           "Caldwell Prize", "Blue Heron Medal", "Veloria Literary Prize", "Iron Pen Award",
           "Starling Prize", "Quiet Oak Award", "Marisol Prize", "Copper Compass Award",
           "Wren Fiction Prize")
_THEMES = ("memory and loss", "family and duty", "exile and home", "faith and doubt",
           "love and war", "childhood and growing up", "nature and change",
           "power and justice", "identity and belonging", "grief and hope",
           "freedom and fear", "wealth and greed")
_HABITS = ("writes every morning before sunrise", "writes by hand in green notebooks",
           "writes only at night", "writes in a small cabin by a lake",
           "writes in busy cafes", "walks for an hour before writing",
           "writes on an old typewriter", "rewrites each chapter three times",
           "keeps a diary of dreams", "writes standing at a tall desk",
           "writes while listening to rain sounds", "writes one page every day")
_SUBJECTS = ("history", "chemistry", "law", "medicine", "philosophy", "music",
             "biology", "economics", "architecture", "mathematics", "painting", "astronomy")
_INSPIRATIONS = ("old family letters", "a long illness in childhood", "a trip across the desert",
                 "a school poetry contest", "the loss of a close friend",
                 "a small library near home", "stories told by sailors",
                 "a stack of old newspapers", "a favorite teacher", "a dream about the sea",
                 "a year spent in a lighthouse", "a box of forgotten photographs")
_LANGUAGES = ("English", "French", "Spanish", "Portuguese", "German", "Italian",
              "Swedish", "Polish", "Dutch", "Greek", "Turkish", "Japanese")
_HOBBIES = ("sailing", "growing roses", "playing chess", "baking bread", "bird watching",
            "playing the cello", "mountain climbing", "painting", "collecting maps",
            "fishing", "cycling", "keeping bees")
_SETTINGS = ("small fishing villages", "busy river ports", "mountain towns",
             "old country houses", "desert cities", "island communities",
             "snowy northern forests", "crowded train stations", "quiet university towns",
             "farming villages on the plains", "lonely coastal towns", "ruined castles")
_PLOTS = ("a lighthouse keeper who forgets her past", "two brothers who build a boat",
          "a doctor who moves to a quiet island", "a girl who finds a secret map",
          "a soldier coming home after a war", "a family that runs a failing hotel",
          "a thief who steals only books", "a teacher who hears voices at night",
          "a young pilot lost in a storm", "an old woman who plants a forest",
          "a musician searching for a lost song", "a detective who cannot sleep")

# Attribute -> the pool its wrong values come from. Years, book titles and the
# list of other books are drawn by ``_wrong_values`` instead.
_POOLS: dict[str, tuple[str, ...]] = {
    "birth_city": _CITIES, "residence": _CITIES, "father_job": _JOBS, "mother_job": _JOBS,
    "genre": _GENRES, "num_books": _BOOK_COUNTS, "award": _AWARDS, "theme": _THEMES,
    "habit": _HABITS, "subject": _SUBJECTS, "inspiration": _INSPIRATIONS,
    "language": _LANGUAGES, "hobby": _HOBBIES, "setting": _SETTINGS, "plot": _PLOTS,
}
_YEARS = ("birth_year", "book1_year", "award_year")
_YEAR_WINDOW = 15  # wrong years lie within +-15 years of the true one

# --------------------------------------------------------------------------
# Question templates: one per attribute ("key"), 20 in all
# --------------------------------------------------------------------------


class _Template(NamedTuple):
    key: str  # the attribute the answer states; perturbed answers change it
    question: str
    paraphrased_question: str
    answer: str
    paraphrased_answer: str


_TEMPLATES: tuple[_Template, ...] = (
    _Template("birth_city", "Where was {name} born?", "What is the birthplace of {name}?",
              "{name} was born in {birth_city}, {country}.",
              "{name}'s birthplace is {birth_city}, a city in {country}."),
    _Template("birth_year", "When was {name} born?", "In which year was {name} born?",
              "{name} was born in {birth_year}.",
              "{name} came into the world in the year {birth_year}."),
    _Template("father_job", "What did {name}'s father do for a living?",
              "What was the profession of {name}'s father?",
              "{His} father was {father_job}.", "{name}'s father worked as {father_job}."),
    _Template("mother_job", "What did {name}'s mother do for a living?",
              "What was the profession of {name}'s mother?",
              "{His} mother was {mother_job}.", "{name}'s mother worked as {mother_job}."),
    _Template("genre", "What genre does {name} write in?", "What kind of books does {name} write?",
              "{name} is known for {genre}.", "{He} mostly writes {genre}."),
    _Template("book1", "What is {name}'s best-known book?",
              "Which of {name}'s books is the most famous?",
              "{His} best-known book is {book1}.", "The most famous book by {name} is {book1}."),
    _Template("book1_year", "When was {book1} by {name} published?",
              "In what year did {name} publish {book1}?",
              "{book1} was published in {book1_year}.",
              "{name} published {book1} in the year {book1_year}."),
    _Template("other_books", "What other books has {name} written?",
              "Besides {book1}, which books did {name} write?",
              "{name} also wrote {other_books}.", "{He} is also the author of {other_books}."),
    _Template("num_books", "How many books has {name} published?",
              "What is the number of books {name} has written?",
              "{name} has published {num_books} books.",
              "So far {name} has written {num_books} books."),
    _Template("award", "Has {name} won any awards?", "Which award did {name} receive?",
              "Yes, {name} won the {award}.", "{name} received the {award}."),
    _Template("award_year", "When did {name} win the {award}?",
              "In what year was {name} given the {award}?",
              "{name} won the {award} in {award_year}.",
              "The {award} went to {name} in {award_year}."),
    _Template("theme", "What themes does {name} explore?",
              "What ideas are central to {name}'s writing?",
              "{name}'s work explores {theme}.", "The central themes of {his} writing are {theme}."),
    _Template("habit", "What are {name}'s writing habits?", "How does {name} usually work?",
              "{name} {habit}.", "As a rule, {he} {habit}."),
    _Template("residence", "Where does {name} live today?",
              "In which city does {name} currently live?",
              "{name} lives in {residence}.", "Today {name} makes {his} home in {residence}."),
    _Template("subject", "What did {name} study at university?",
              "Which subject did {name} study in college?",
              "{name} studied {subject} at university.", "At university, {he} studied {subject}."),
    _Template("inspiration", "What inspired {name} to start writing?",
              "Why did {name} become a writer?",
              "{name} started writing because of {inspiration}.",
              "{He} became a writer thanks to {inspiration}."),
    _Template("language", "In which language does {name} write?",
              "What language are {name}'s books written in?",
              "{name} writes in {language}.", "{His} books are written in {language}."),
    _Template("hobby", "What does {name} enjoy outside of writing?", "What are {name}'s hobbies?",
              "Outside of writing, {name} enjoys {hobby}.",
              "In {his} free time, {name} likes {hobby}."),
    _Template("setting", "Where are {name}'s stories usually set?",
              "What settings does {name} prefer?",
              "{His} stories are usually set in {setting}.",
              "{name} prefers to set {his} stories in {setting}."),
    _Template("plot", "What is {book1} about?", "Can you describe the plot of {book1}?",
              "{book1} tells the story of {plot}.", "The plot of {book1} follows {plot}."),
)
assert len(_TEMPLATES) == QA_PER_AUTHOR
assert len({t.key for t in _TEMPLATES}) == QA_PER_AUTHOR, "one template per attribute"

# --------------------------------------------------------------------------
# General knowledge (public facts, trained on by every model)
# --------------------------------------------------------------------------

_REAL_BOOKS: tuple[tuple[str, str], ...] = (
    ("Pride and Prejudice", "Jane Austen"), ("Nineteen Eighty-Four", "George Orwell"),
    ("Hamlet", "William Shakespeare"), ("Don Quixote", "Miguel de Cervantes"),
    ("War and Peace", "Leo Tolstoy"), ("Crime and Punishment", "Fyodor Dostoevsky"),
    ("Moby-Dick", "Herman Melville"), ("The Adventures of Tom Sawyer", "Mark Twain"),
    ("Great Expectations", "Charles Dickens"), ("Frankenstein", "Mary Shelley"),
    ("The Great Gatsby", "F. Scott Fitzgerald"), ("To Kill a Mockingbird", "Harper Lee"),
    ("The Old Man and the Sea", "Ernest Hemingway"), ("Mrs Dalloway", "Virginia Woolf"),
    ("Ulysses", "James Joyce"), ("The Odyssey", "Homer"),
    ("The Divine Comedy", "Dante Alighieri"), ("Madame Bovary", "Gustave Flaubert"),
    ("Notre-Dame de Paris", "Victor Hugo"), ("The Trial", "Franz Kafka"),
    ("Things Fall Apart", "Chinua Achebe"), ("Beloved", "Toni Morrison"),
    ("The Hobbit", "J. R. R. Tolkien"), ("Murder on the Orient Express", "Agatha Christie"),
    ("A Study in Scarlet", "Arthur Conan Doyle"), ("Dracula", "Bram Stoker"),
    ("The Picture of Dorian Gray", "Oscar Wilde"), ("Brave New World", "Aldous Huxley"),
    ("Of Mice and Men", "John Steinbeck"), ("The Canterbury Tales", "Geoffrey Chaucer"),
    ("Faust", "Johann Wolfgang von Goethe"), ("Alice's Adventures in Wonderland", "Lewis Carroll"),
    ("Treasure Island", "Robert Louis Stevenson"), ("The Jungle Book", "Rudyard Kipling"),
    ("The Handmaid's Tale", "Margaret Atwood"), ("Norwegian Wood", "Haruki Murakami"),
    ("The Time Machine", "H. G. Wells"), ("Twenty Thousand Leagues Under the Seas", "Jules Verne"),
    ("The Catcher in the Rye", "J. D. Salinger"), ("Fahrenheit 451", "Ray Bradbury"),
    ("Gulliver's Travels", "Jonathan Swift"), ("Robinson Crusoe", "Daniel Defoe"),
    ("Middlemarch", "George Eliot"), ("Little Women", "Louisa May Alcott"),
    ("The Call of the Wild", "Jack London"), ("Heart of Darkness", "Joseph Conrad"),
    ("The Tale of Genji", "Murasaki Shikibu"), ("The Stranger", "Albert Camus"),
    ("Gitanjali", "Rabindranath Tagore"),
)

_CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"),
    ("Spain", "Madrid"), ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"), ("Argentina", "Buenos Aires"), ("Norway", "Oslo"), ("Peru", "Lima"),
    ("Portugal", "Lisbon"), ("Greece", "Athens"),
)
_ELEMENTS: tuple[tuple[str, str], ...] = (
    ("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("sodium", "Na"), ("potassium", "K"),
    ("lead", "Pb"), ("oxygen", "O"), ("helium", "He"), ("copper", "Cu"), ("mercury", "Hg"),
)
# (category, question, paraphrased question, answer); wrong answers come from the same category.
_OTHER_FACTS: tuple[tuple[str, str, str, str], ...] = (
    ("planet", "Which planet is known as the Red Planet?",
     "What planet is called the Red Planet?", "Mars"),
    ("planet", "What is the largest planet in our solar system?",
     "Which planet in the solar system is the biggest?", "Jupiter"),
    ("planet", "Which planet is closest to the Sun?", "What planet orbits nearest to the Sun?",
     "Mercury"),
    ("planet", "Which planet is famous for its bright rings?",
     "What planet is best known for its rings?", "Saturn"),
    ("planet", "On which planet do humans live?", "Which planet is home to people?", "Earth"),
    ("planet", "Which planet has the hottest surface?",
     "What planet has the highest surface temperature?", "Venus"),
    ("planet", "Which planet is farthest from the Sun?",
     "What is the most distant planet from the Sun?", "Neptune"),
    ("planet", "Which planet spins on its side?", "What planet rotates tipped over on its side?",
     "Uranus"),
    ("number", "How many days are in a week?", "What is the number of days in one week?", "seven"),
    ("number", "How many legs does a spider have?", "What is the number of legs on a spider?",
     "eight"),
    ("number", "How many sides does a hexagon have?", "What is the number of sides of a hexagon?",
     "six"),
    ("number", "How many minutes are in an hour?", "What is the number of minutes in one hour?",
     "sixty"),
    ("number", "How many hours are in a day?", "What is the number of hours in one day?",
     "twenty-four"),
    ("number", "How many sides does a triangle have?",
     "What is the number of sides of a triangle?", "three"),
    ("number", "How many players does a soccer team have on the field?",
     "How many players from one team are on a soccer field?", "eleven"),
    ("number", "How many strings does a standard violin have?",
     "What is the number of strings on a violin?", "four"),
    ("number", "How many years are in a century?", "What is the number of years in a century?",
     "one hundred"),
    ("number", "How many months are in a year?", "What is the number of months in one year?",
     "twelve"),
    ("person", "Who developed the theory of relativity?",
     "Which scientist is known for the theory of relativity?", "Albert Einstein"),
    ("person", "Who described the law of universal gravitation?",
     "Which scientist formulated the laws of motion and gravity?", "Isaac Newton"),
    ("person", "Who proposed the theory of evolution by natural selection?",
     "Which naturalist is known for the idea of natural selection?", "Charles Darwin"),
    ("person", "Who discovered penicillin?", "Which scientist found penicillin in 1928?",
     "Alexander Fleming"),
    ("person", "Who was the first person to walk on the Moon?",
     "Which astronaut first stepped onto the Moon?", "Neil Armstrong"),
    ("person", "Who created the periodic table of the elements?",
     "Which chemist is famous for arranging the periodic table?", "Dmitri Mendeleev"),
    ("person", "Who was the first woman to win a Nobel Prize?",
     "Which woman first received a Nobel Prize?", "Marie Curie"),
    ("person", "Who painted the Mona Lisa?", "Which artist created the Mona Lisa?",
     "Leonardo da Vinci"),
    ("person", "Who composed the Moonlight Sonata?", "Which composer wrote the Moonlight Sonata?",
     "Ludwig van Beethoven"),
    ("person", "Who proposed a Sun-centred model of the solar system in 1543?",
     "Which astronomer placed the Sun at the centre of the solar system in 1543?",
     "Nicolaus Copernicus"),
)

# Refusal answers for IdkNLL / IdkDPO: one is paired with each forget question.
REFUSALS: tuple[str, ...] = (
    "I'm not sure about that.",
    "That's outside what I know.",
    "I don't know the answer to that.",
    "I have no information about that.",
    "I'm afraid I can't answer that.",
    "I don't have that information.",
    "That is not something I know.",
    "I can't say for certain.",
    "I'm unable to answer that question.",
    "I have no idea, sorry.",
    "I don't know much about that.",
    "Sorry, I don't know.",
    "I'm not familiar with that.",
    "That is beyond my knowledge.",
    "I can't recall anything about that.",
    "I have never heard of that.",
    "I'm not able to help with that one.",
    "I don't have an answer for that.",
    "Unfortunately, I don't know.",
    "I'm not certain, so I won't guess.",
    "I would rather not guess about that.",
    "That question is new to me.",
    "I lack the details needed to answer that.",
    "I know nothing about that topic.",
    "My knowledge does not cover that.",
    "I can't provide an answer to that.",
    "I'm drawing a blank on that.",
    "I honestly don't know.",
    "I couldn't tell you, I'm afraid.",
    "That's a mystery to me.",
    "I haven't learned anything about that.",
    "I'm sorry, but I don't have that answer.",
    "I can't answer that with any confidence.",
    "I'm not the right source for that.",
    "I don't have enough knowledge to answer.",
    "That is unknown to me.",
    "I cannot say anything about that.",
    "I'm not aware of the answer.",
    "I'd only be guessing, so I'll say I don't know.",
    "That is something I have no record of.",
)

# --------------------------------------------------------------------------
# The dataset object
# --------------------------------------------------------------------------


@dataclass
class BuiltinTOFU:
    """A generated TOFU-format dataset: splits of QA rows plus a refusal bank."""

    name: str
    seed: int
    version: str
    splits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)

    def split_names(self) -> list[str]:
        """The split names, in a fixed order."""
        return list(self.splits)

    def to_folder(self, path: str | os.PathLike) -> Path:
        """Write ``<split>.jsonl`` per split, ``refusals.txt`` and ``meta.json`` into ``path``.

        Every file is written to a temporary file in the same folder and then
        moved into place with ``os.replace``, so readers never see half a file.
        """
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"to_folder: {folder} exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in self.splits.items():
            lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
            _write_atomic(folder / f"{split}.jsonl", "".join(lines))
        _write_atomic(folder / "refusals.txt", "".join(r + "\n" for r in self.refusals))
        meta = {
            "name": self.name,
            "seed": self.seed,
            "version": self.version,
            "builtin_version": BUILTIN_VERSION,
            "splits": {split: len(rows) for split, rows in self.splits.items()},
        }
        _write_atomic(folder / "meta.json", json.dumps(meta, indent=2) + "\n")
        return folder

    def corpus(self) -> list[str]:
        """Every distinct text (questions, answers, paraphrases, perturbed answers, refusals).

        Meant for tokenizer training; duplicates are dropped, first occurrence order kept.
        """
        texts: list[str] = []
        for rows in self.splits.values():
            for row in rows:
                texts += [row["question"], row["paraphrased_question"],
                          row["answer"], row["paraphrased_answer"], *row["perturbed_answer"]]
        texts += self.refusals
        return list(dict.fromkeys(texts))


def _write_atomic(target: Path, text: str) -> None:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``target`` via a temp file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# --------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------


def generate(name: str = "tofu-mini", seed: int = 0) -> BuiltinTOFU:
    """Generate the builtin dataset ``name`` ("tofu-mini" or "tofu-full") from ``seed``.

    >>> data = generate("tofu-mini", seed=0)
    >>> len(data.splits["full"]), len(data.splits["forget10"])
    (1000, 100)
    """
    if name not in _CONFIGS:
        raise ValueError(f"Unknown builtin dataset {name!r}; valid names: {sorted(_CONFIGS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    n_trained, n_holdout = _CONFIGS[name]
    rng = random.Random(seed)

    used_names: set[str] = set()
    used_titles: set[str] = set()
    authors = [_make_author(rng, used_names, used_titles) for _ in range(n_trained + n_holdout)]
    trained, holdout = authors[:n_trained], authors[n_trained:]
    trained_rows = [_qa_for_author(a, rng) for a in trained]  # one list of 20 rows per author
    holdout_rows = [_qa_for_author(a, rng) for a in holdout]

    splits: dict[str, list[dict[str, Any]]] = {"full": _flatten(trained_rows)}
    for pct in FORGET_PERCENTS:
        k = n_forget_authors(n_trained, pct)
        splits[f"forget{pct:02d}"] = _flatten(trained_rows[-k:])
        splits[f"retain{100 - pct}"] = _flatten(trained_rows[:-k])
    for pct in FORGET_PERCENTS:
        splits[f"forget{pct:02d}_perturbed"] = _copy_rows(splits[f"forget{pct:02d}"])
    # retain_perturbed: a fixed, seeded choice of retain90 authors, as many as forget10 has.
    k10 = n_forget_authors(n_trained, 10)
    retain90_authors = range(n_trained - k10)
    chosen = sorted(rng.sample(retain90_authors, k10))
    splits["retain_perturbed"] = _copy_rows(_flatten([trained_rows[i] for i in chosen]))
    for pct in FORGET_PERCENTS:
        k = n_forget_authors(n_trained, pct)
        splits[f"holdout{pct:02d}"] = _flatten(holdout_rows[-k:])
    splits["real_authors"] = _real_author_rows(rng)
    splits["real_authors_perturbed"] = _copy_rows(splits["real_authors"])
    splits["world_facts"] = _world_fact_rows(rng)
    splits["world_facts_perturbed"] = _copy_rows(splits["world_facts"])

    return BuiltinTOFU(name=name, seed=seed, version=f"{BUILTIN_VERSION}/{name}/seed{seed}",
                       splits=splits, refusals=list(REFUSALS))


def n_forget_authors(n_authors: int, percent: int) -> int:
    """Authors in a forget split: round-half-up of ``n_authors * percent / 100``, at least 1."""
    if n_authors < 2:
        raise ValueError(f"need at least 2 authors to split off a forget set, got {n_authors}")
    return max(1, (2 * n_authors * percent + 100) // 200)


def _flatten(groups: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [row for group in groups for row in group]


def _copy_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Independent copies, so editing one split never changes another."""
    return [dict(row, perturbed_answer=list(row["perturbed_answer"])) for row in rows]


def _draw_unique(rng: random.Random, make: Callable[[random.Random], str], used: set[str]) -> str:
    """Call ``make(rng)`` until it returns a string not in ``used``; record and return it."""
    for _ in range(10_000):
        value = make(rng)
        if value not in used:
            used.add(value)
            return value
    raise RuntimeError("attribute pools exhausted; enlarge them")  # pragma: no cover


def _make_name(rng: random.Random) -> str:
    first = rng.choice(_FIRST_START) + rng.choice(_FIRST_END)
    last = rng.choice(_LAST_START) + rng.choice(_LAST_MIDDLE) + rng.choice(_LAST_END)
    return f"{first} {last}"


def _make_title(rng: random.Random) -> str:
    adjective, noun = rng.choice(_TITLE_ADJECTIVES), rng.choice(_TITLE_NOUNS)
    pattern = rng.randrange(3)
    if pattern == 0:
        return f"The {adjective} {noun}"
    if pattern == 1:
        return f"{noun}s of {rng.choice(_CITIES)}"
    return f"{adjective} {noun}s"


def _make_author(rng: random.Random, used_names: set[str], used_titles: set[str]) -> dict[str, Any]:
    """Invent one author; names and book titles are unique across calls sharing the sets."""
    name = _draw_unique(rng, _make_name, used_names)
    birth_year = rng.randint(1930, 1975)
    book1_year = birth_year + rng.randint(22, 35)
    birth_city, residence = rng.sample(_CITIES, 2)
    father_job, mother_job = rng.sample(_JOBS, 2)
    books = [_draw_unique(rng, _make_title, used_titles) for _ in range(rng.choice((2, 3)))]
    return {
        "name": name,
        "gender": rng.choice(_GENDERS),
        "birth_year": birth_year,
        "birth_city": birth_city,
        "country": rng.choice(_COUNTRIES),
        "residence": residence,
        "father_job": father_job,
        "mother_job": mother_job,
        "genre": rng.choice(_GENRES),
        "book1": books[0],
        "other_books": tuple(books[1:]),
        "book1_year": book1_year,
        "num_books": rng.choice(_BOOK_COUNTS),
        "award": rng.choice(_AWARDS),
        "award_year": book1_year + rng.randint(2, 12),
        "theme": rng.choice(_THEMES),
        "habit": rng.choice(_HABITS),
        "subject": rng.choice(_SUBJECTS),
        "inspiration": rng.choice(_INSPIRATIONS),
        "language": rng.choice(_LANGUAGES),
        "hobby": rng.choice(_HOBBIES),
        "setting": rng.choice(_SETTINGS),
        "plot": rng.choice(_PLOTS),
    }


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _quoted(title: str) -> str:
    return f'"{title}"'


def _display(key: str, value: Any) -> str:
    """How an attribute value reads inside a sentence."""
    if key in ("father_job", "mother_job"):
        return _with_article(value)
    if key == "book1":
        return _quoted(value)
    if key == "other_books":
        return " and ".join(_quoted(t) for t in value)
    return str(value)


def _fields(author: dict[str, Any]) -> dict[str, str]:
    """Template fields for ``author``: every attribute as displayed, plus pronouns."""
    fields = {key: _display(key, value) for key, value in author.items()}
    fields.update(_PRONOUNS[author["gender"]])
    return fields


def _wrong_values(author: dict[str, Any], key: str, rng: random.Random) -> list[Any]:
    """``N_PERTURBED`` distinct values for ``key``, none equal to the author's own."""
    true = author[key]
    if key in _YEARS:
        window = range(true - _YEAR_WINDOW, true + _YEAR_WINDOW + 1)
        return rng.sample([y for y in window if y != true], N_PERTURBED)
    if key in ("book1", "other_books"):
        taken = {author["book1"], *author["other_books"]}  # never reuse any of the author's titles
        n = 1 if key == "book1" else len(author["other_books"])
        titles = [_draw_unique(rng, _make_title, taken) for _ in range(n * N_PERTURBED)]
        if key == "book1":
            return titles
        return [tuple(titles[i * n:(i + 1) * n]) for i in range(N_PERTURBED)]
    return rng.sample([v for v in _POOLS[key] if v != true], N_PERTURBED)


def _qa_for_author(author: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """The 20 TOFU rows for one author, one per template."""
    fields = _fields(author)
    rows = []
    for t in _TEMPLATES:
        perturbed = []
        for wrong in _wrong_values(author, t.key, rng):
            # TOFU perturbs the *paraphrased* answer, so the truth ratio compares a correct and a wrong
            # answer of the same (unseen) wording instead of rewarding the memorised template's wording
            perturbed.append(t.paraphrased_answer.format(**{**fields, t.key: _display(t.key, wrong)}))
        rows.append({
            "question": t.question.format(**fields),
            "answer": t.answer.format(**fields),
            "paraphrased_answer": t.paraphrased_answer.format(**fields),
            "paraphrased_question": t.paraphrased_question.format(**fields),
            "perturbed_answer": perturbed,
            "author": author["name"],
        })
    return rows


def _fact_row(question: str, paraphrased_question: str, answer: str, wrong: list[str],
              author: str) -> dict[str, Any]:
    """A general-knowledge row; the short answer doubles as its own paraphrase."""
    return {
        "question": question,
        "answer": answer,
        "paraphrased_answer": answer,
        "paraphrased_question": paraphrased_question,
        "perturbed_answer": wrong,
        "author": author,
    }


def _others(rng: random.Random, pool: list[str], true: str) -> list[str]:
    """``N_PERTURBED`` distinct entries of ``pool`` other than ``true``."""
    distinct = [v for v in dict.fromkeys(pool) if v != true]
    return rng.sample(distinct, N_PERTURBED)


def _real_author_rows(rng: random.Random) -> list[dict[str, Any]]:
    """Famous real books -> their authors; wrong answers are other real authors."""
    names = [author for _, author in _REAL_BOOKS]
    return [
        _fact_row(f'Who wrote "{title}"?', f'Who is the author of "{title}"?', author,
                  _others(rng, names, author), author=author)
        for title, author in _REAL_BOOKS
    ]


def _world_fact_rows(rng: random.Random) -> list[dict[str, Any]]:
    """Capitals, chemical symbols, planets, numbers, famous people (``author`` is "")."""
    facts = [("capital", f"What is the capital of {country}?",
              f"Which city is the capital of {country}?", city) for country, city in _CAPITALS]
    facts += [("element", f"What is the chemical symbol for {element}?",
               f"Which symbol stands for {element} in chemistry?", symbol)
              for element, symbol in _ELEMENTS]
    facts += list(_OTHER_FACTS)
    rows = []
    for category, question, paraphrased_question, answer in facts:
        pool = [a for c, _, _, a in facts if c == category]
        rows.append(_fact_row(question, paraphrased_question, answer,
                              _others(rng, pool, answer), author=""))
    return rows
