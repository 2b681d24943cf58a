"""The attribute vocabulary shared by the request generator (which writes it) and the
attribute-filter baseline (which reads it back out of free text). One list, so the two
cannot drift apart; the parser sees only the instruction text, never the generator's fields.
"""

from __future__ import annotations

# Several surface forms per genre: wording varies across requests as it does with people.
GENRE_PHRASES: dict[str, list[str]] = {
    "Action": ["action", "action-packed"],
    "Adventure": ["adventure", "adventurous"],
    "Animation": ["animated", "animation", "cartoon"],
    "Children's": ["children's", "kids'", "family"],
    "Comedy": ["comedy", "funny", "comedic"],
    "Crime": ["crime", "gangster"],
    "Documentary": ["documentary", "non-fiction"],
    "Drama": ["drama", "dramatic"],
    "Fantasy": ["fantasy", "magical"],
    "Film-Noir": ["film noir", "noir"],
    "Horror": ["horror", "scary"],
    "Musical": ["musical", "song-and-dance"],
    "Mystery": ["mystery", "whodunit"],
    "Romance": ["romance", "romantic", "love story"],
    "Sci-Fi": ["sci-fi", "science fiction", "futuristic"],
    "Thriller": ["thriller", "suspenseful", "edge-of-your-seat"],
    "War": ["war", "wartime"],
    "Western": ["western", "cowboy"],
}

DECADE_WORDS = {1920: "twenties", 1930: "thirties", 1940: "forties", 1950: "fifties",
                1960: "sixties", 1970: "seventies", 1980: "eighties", 1990: "nineties"}

POPULAR_PHRASES = ["popular", "well-known", "crowd-pleasing", "much-watched"]
OBSCURE_PHRASES = ["lesser-known", "obscure", "under-the-radar", "little-seen"]
ACCLAIMED_PHRASES = ["highly rated", "acclaimed", "top-rated", "well-reviewed"]

# Popularity levels are cut on training-window counts (share of items above/below).
POPULAR_TOP_SHARE = 0.10
OBSCURE_BOTTOM_SHARE = 0.50
ACCLAIMED_MIN_MEAN = 4.0
ACCLAIMED_MIN_COUNT = 10


def genre_phrases(genre: str) -> list[str]:
    """Surface forms of a genre; an unlisted genre (bring-your-own data) is its own name."""
    return GENRE_PHRASES.get(genre, [genre.lower()])
