"""Spot image-search requests in plain chat ("show me the dog picture from last week") with rules.

Every chat message passes through here, so it must be cheap and, above all, quiet: a false positive
answers ordinary chat with a gallery. A message counts as a search request only when it both

* *asks*: starts (after greetings, a leading mention, "can you", "please") with a search verb
  ("show me", "find", "search for", "look for", "pull up", ...) or a search question ("any", "do you
  have", "where's", "is there"), and
* names *images* ("picture", "pic", "photo", "image", "screenshot", "meme", "selfie", ...),

or it is a "what did <someone> post/share/send/upload" question. "find out ...", a noun phrase owned
by "your" ("show me your cat pics" is people talking to each other) and "I can't find..." never match.

What remains after removing the request words, the time phrase and the author phrase is the query.
Time phrases become a half-open range ``[since, until)`` computed from the ``now`` argument (its
timezone decides where days start). ``author_hint`` is only a hint: a name, ``@name``, ``<@id>`` or
``"me"``; the caller resolves it against the guild's members and, when nobody matches, should search
for it as text instead (:meth:`SearchIntent.without_author`), since "photos from paris" names a place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta

IMAGE_NOUN = (
    r"(?:pics?|pix|pictures?|photos?|photographs?|images?|imgs?|screenshots?|screen ?caps?|memes?|selfies?"
    r"|snapshots?|gifs?|drawings?|artworks?|wallpapers?)"
)
_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "a couple of": 2, "a couple": 2, "couple of": 2,
    "a few": 3, "few": 3,
}
_NUMBER = r"(?:\d{1,3}|" + "|".join(sorted((re.escape(word) for word in _NUMBERS), key=len, reverse=True)) + ")"
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

# Leading words that only address the bot or soften the request.
_LEAD = re.compile(
    r"^(?:(?:<@!?\d+>|@\w+\b|(?:hey|hi|hello|yo|ok|okay|so|um+|uh+|bot|imagebot|please|pls|plz)\b)[\s,:!.]*)+",
    re.IGNORECASE,
)
_POLITE = re.compile(
    r"^(?:(?:can|could|would|will) (?:you|u)(?: please| pls)?|i want to see|i wanna see|i'd like to see|"
    r"id like to see|let me see|lemme see|help me find)\b\s*",
    re.IGNORECASE,
)
_VERB = re.compile(
    r"^(?:show|find|search(?: for| up)?|look (?:for|up)|pull up|dig up|bring up|fetch|display|locate)\b\s*",
    re.IGNORECASE,
)
_QUESTION = re.compile(
    r"^(?:(?:do|did) (?:you|u) have|have (?:you|u) got|got any|are there(?: any)?|is there|any|"
    r"where(?:'s| is| are|'re))\b\s*",
    re.IGNORECASE,
)
_WHO = r"(?P<who><@!?\d+>|@?[\w.-]+)"
_WHAT_DID = re.compile(
    r"^(?:what|which)(?: " + IMAGE_NOUN + r")? (?:did|has|have) " + _WHO
    + r" (?:post|posted|share|shared|send|sent|upload|uploaded)\b\s*(?P<rest>.*)$",
    re.IGNORECASE,
)
# "find out ...", and "your" anything: people talking to each other ("show me your cat pics").
_NOT_A_SEARCH = re.compile(r"^(?:find|found) out\b|\b(?:your|ur|yours)\b", re.IGNORECASE)

_FILLER = frozenset(
    "me us i we my the that those this these a an some any all of with from showing featuring about which where "
    "there please pls plz again one ones for in on at when was were is are it real quick thanks thx up here to and "
    "or by you u did have had got recent recently lately earlier someone somebody anyone sent posted shared "
    "uploaded old like".split()
)
_PRONOUN_AUTHORS = {"i": "me", "me": "me", "my": "me", "myself": "me"}
_NOT_AUTHORS = frozenset(
    "you u someone somebody anyone anybody people everyone they we he she it the a an that this those these who "
    "was were is are been be just already recently earlier before today yesterday that's i've you've we've "
    "they've".split()
)


@dataclass(frozen=True)
class SearchIntent:
    query: str  # what to look for, may be "" ("what did alice post last month")
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    author_hint: str | None = None  # "alice", "<@123>", "me" (= the requester)

    def without_author(self) -> SearchIntent:
        """The author hint matched nobody: treat it as part of what to look for."""
        if not self.author_hint or self.author_hint == "me":
            return replace(self, author_hint=None)
        name = self.author_hint.lstrip("@")
        return replace(self, query=f"{self.query} {name}".strip(), author_hint=None)


def detect_search_intent(text: str, *, now: datetime) -> SearchIntent | None:
    """A :class:`SearchIntent` if ``text`` asks to find posted images, else None.

    ``now`` (timezone-aware; naive is taken as UTC) anchors relative dates, so results are deterministic.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    message = " ".join(text.strip().split())
    if not message or len(message) > 300 or "```" in message:
        return None
    message = _LEAD.sub("", _POLITE.sub("", _LEAD.sub("", message)))  # "hey, can you please ..."
    message = message.rstrip("?!. ").strip()

    author: str | None = None
    what = _WHAT_DID.match(message)
    if what:
        author = _author_name(what["who"])
        if author is None:
            return None
        rest = what["rest"]
    else:
        verb = _VERB.match(message) or _QUESTION.match(message)
        if not verb or _NOT_A_SEARCH.search(message):
            return None
        rest = message[verb.end():]
        if not re.search(rf"\b{IMAGE_NOUN}\b", rest, re.IGNORECASE):
            return None

    rest, since, until = _take_time(rest, now)
    if author is None:
        rest, author = _take_author(rest)
    query = _trim(re.sub(rf"\b{IMAGE_NOUN}\b", " ", rest, flags=re.IGNORECASE))
    if not (query or since or author):
        return None  # a bare "any pics?" is chat, not a search
    return SearchIntent(query=query, since=since, until=until, author_hint=author)


def _author_name(raw: str) -> str | None:
    if raw.startswith("<@"):
        return raw.replace("<@!", "<@")
    name = raw.strip().lower()
    if name in _PRONOUN_AUTHORS:
        return _PRONOUN_AUTHORS[name]
    if name in _NOT_AUTHORS or re.fullmatch(IMAGE_NOUN, name):
        return None
    return name.lstrip("@") or None


_AUTHOR_PATTERNS = (
    # "... posted by alice", "photos by @alice" ("by the lake" is refused by _author_name)
    re.compile(r"\b(?:(?:posted|sent|shared|uploaded) )?by " + _WHO, re.IGNORECASE),
    # "pics from <@123>" / "from @alice": a mention is unambiguous
    re.compile(r"\bfrom (?P<who><@!?\d+>|@[\w.-]+)", re.IGNORECASE),
    # "the pic alice posted", "that photo i sent"
    re.compile(r"\b(?:that |which )?" + _WHO + r" (?:posted|sent|shared|uploaded)\b", re.IGNORECASE),
    # "my photos", "my cat pics" (but not "photos of my dog")
    re.compile(r"\b(?P<who>my) (?=(?:[\w'-]+ ){0,2}" + IMAGE_NOUN + r"\b)", re.IGNORECASE),
    # "pics from alice": one bare word after "from" at the end; may be a place (see without_author())
    re.compile(r"\bfrom (?P<who>(?!(?:the|a|an|my|our|this|that|here|there)\b)[\w.-]+)\s*$", re.IGNORECASE),
)


def _take_author(rest: str) -> tuple[str, str | None]:
    for pattern in _AUTHOR_PATTERNS:
        for match in pattern.finditer(rest):
            name = _author_name(match["who"])
            if name is not None:
                return rest[:match.start()] + " " + rest[match.end():], name
    return rest, None


def _trim(rest: str) -> str:
    words = re.sub(r"[^\w\s'&+#-]", " ", rest.lower()).split()
    while words and words[0] in _FILLER:
        words.pop(0)
    while words and words[-1] in _FILLER:
        words.pop()
    return " ".join(words)


# ----- time phrases -----

def _midnight(day: date, now: datetime) -> datetime:
    return datetime.combine(day, time(0), tzinfo=now.tzinfo)


def _month_start(year: int, month: int, now: datetime) -> datetime:
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    return _midnight(date(year, month, 1), now)


def _number(raw: str) -> int:
    raw = raw.lower()
    return int(raw) if raw.isdigit() else _NUMBERS[raw]


_SPANS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1),
          "month": timedelta(days=30), "year": timedelta(days=365)}


def _range_for(groups: dict[str, str], now: datetime) -> tuple[datetime | None, datetime | None]:
    """[since, until) for one matched time phrase (its non-empty regex groups)."""
    today = _midnight(now.date(), now)
    week = today - timedelta(days=now.weekday())  # Monday 00:00
    if "today" in groups:
        return today, today + timedelta(days=1)
    if "yesterday" in groups:
        return today - timedelta(days=1), today
    if "night" in groups:
        return today - timedelta(hours=6), today + timedelta(hours=6)
    if "which" in groups:
        which, unit = groups["which"].lower(), groups["unit"].lower()
        if which == "past":  # "past week": a rolling window, not the previous calendar week
            return now - _SPANS[unit], None
        back = int(which in ("last", "previous"))
        if unit == "week":
            start = week - timedelta(weeks=back)
            return start, start + timedelta(weeks=1)
        if unit == "month":
            start = _month_start(now.year, now.month - back, now)
            return start, _month_start(start.year, start.month + 1, now)
        start = _midnight(date(now.year - back, 1, 1), now)
        return start, _midnight(date(start.year + 1, 1, 1), now)
    if "ago" in groups:  # the calendar day / week / month that many units back
        count, unit = _number(groups["ago_n"]), groups["ago_unit"].lower().rstrip("s")
        if unit == "day":
            start = today - timedelta(days=count)
            return start, start + timedelta(days=1)
        if unit == "week":
            start = week - timedelta(weeks=count)
            return start, start + timedelta(weeks=1)
        start = _month_start(now.year, now.month - count, now)
        return start, _month_start(start.year, start.month + 1, now)
    if "past" in groups:  # "the last 3 days": rolling, up to now
        count = _number(groups["past_n"]) if "past_n" in groups else 1
        return now - count * _SPANS[groups["past_unit"].lower().rstrip("s")], None
    # A weekday: the most recent one (today counts, except for "last monday" said on a Monday).
    back = (now.weekday() - _WEEKDAYS.index(groups["weekday"].lower())) % 7
    if back == 0 and groups["wd_which"].lower() == "last":
        back = 7
    start = today - timedelta(days=back)
    return start, (None if groups["wd_which"].lower() == "since" else start + timedelta(days=1))


_TIME = re.compile(
    r"\b(?:(?P<since>since)\s+|(?:from|on|in|during|over)\s+)?(?:"
    r"(?P<today>today|this morning|this afternoon|this evening|tonight)"
    r"|(?P<yesterday>yesterday)"
    r"|(?P<night>last night)"
    r"|(?P<which>this|last|past|previous) (?P<unit>week|month|year)"
    r"|(?P<ago>(?P<ago_n>" + _NUMBER + r") (?P<ago_unit>days?|weeks?|months?) ago)"
    r"|(?P<past>(?:the )?(?:past|last) (?:(?P<past_n>" + _NUMBER + r") )?(?P<past_unit>hours?|days?|weeks?|months?))"
    r"|(?P<wd_which>last|this|on|since|from) (?P<weekday>" + "|".join(_WEEKDAYS) + r")"
    r")\b",
    re.IGNORECASE,
)


def _take_time(rest: str, now: datetime) -> tuple[str, datetime | None, datetime | None]:
    match = _TIME.search(rest)
    if not match:
        return rest, None, None
    groups = {key: value for key, value in match.groupdict().items() if value}
    since, until = _range_for(groups, now)
    if "since" in groups:
        until = None
    return rest[:match.start()] + " " + rest[match.end():], since, until
