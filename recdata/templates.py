"""Phrasings of requests, per task family, for any domain. `{desc}` stands for the intention
built from the target's attributes ("a highly rated comedy from the '90s"); `{verb}`,
`{past}` and `{noun}` are filled from the dataset's schema (recdata/schema.py: "listen
to", "buy", "read"), so one list serves every catalogue. Each family is split into training
and held-out phrasings by the generator; test requests use held-out ones only.
"""

from __future__ import annotations

HISTORY = [
    "Recommend me something to {verb} tonight.",
    "What should I {verb} next?",
    "Got any suggestions for me?",
    "I'm bored, pick something for me.",
    "Surprise me with something good.",
    "What would I enjoy right now?",
    "Find me my next favourite.",
    "Give me a recommendation.",
    "Something good to {verb} tonight, please.",
    "What's a good pick for me?",
    "I need something to {verb}.",
    "Any ideas for tonight?",
    "Suggest something I'd like.",
    "What do you think I'd like next?",
    "Pick my next one.",
    "I want to {verb} something, you choose.",
    "Help me decide what to {verb}.",
    "Recommend something based on what I've seen.",
    "Show me something I'll probably love.",
    "What's next for me?",
    "I have a free evening, what should I put on?",
    "Something for the weekend?",
    "Choose something for me to {verb}.",
    "Whatever you think fits my taste.",
    "I'd like a suggestion, please.",
    "Can you recommend me something?",
    "Tell me what to {verb}.",
    "What else might I like?",
    "Give me something new to try.",
    "Based on my history, what now?",
    "Make a pick for {noun} night.",
    "Find something that suits me.",
    "Something along the lines of what I usually {verb}.",
    "Any good recommendations for me today?",
    "Queue up something I'd enjoy.",
    "I can't decide, help me out.",
]

INTENT = [
    "I'm in the mood for {desc}.",
    "Recommend me {desc}.",
    "Can you suggest {desc}?",
    "I want to {verb} {desc} tonight.",
    "Looking for {desc}, any ideas?",
    "Give me {desc}.",
    "What's {desc} I might like?",
    "I feel like {desc}.",
    "Please pick {desc} for me.",
    "Something like {desc} would be great.",
    "Tonight calls for {desc}.",
    "I'd love {desc} right now.",
    "Help me find {desc}.",
    "Suggest {desc} that fits my taste.",
    "Any recommendations for {desc}?",
    "I could go for {desc}.",
    "Show me {desc}.",
    "Do you have {desc} for me?",
    "Let's {verb} {desc}.",
    "Find me {desc}, please.",
    "My pick tonight should be {desc}.",
    "Got {desc} I haven't seen?",
    "I'm after {desc}.",
    "Could you recommend {desc}?",
    "I'd enjoy {desc} this evening.",
    "Time for {desc}, what do you suggest?",
    "Point me to {desc}.",
    "Choose {desc} for me.",
    "I fancy {desc}.",
    "What would be {desc} for me to {verb}?",
    "Queue up {desc}.",
    "Recommend {desc} based on my taste.",
    "In the mood for {desc} today.",
    "How about {desc}?",
    "I'm craving {desc}.",
    "Put on {desc} for me.",
]

SEARCH = [
    "Search for {desc}.",
    "Find {desc}.",
    "Looking for {desc}.",
    "Show me {desc}.",
    "I need {desc}.",
    "List {desc}.",
    "Any {desc}?",
    "Results for {desc}.",
    "Browse {desc}.",
    "Find me {desc}.",
    "Search: {desc}.",
    "Where can I find {desc}?",
    "Look up {desc}.",
    "Get me {desc}.",
    "Is there {desc}?",
    "Discover {desc}.",
    "Which titles are {desc}?",
    "Search the catalogue for {desc}.",
    "Query: {desc}.",
    "Find a title that is {desc}.",
    "Show {desc}.",
    "Suggest {desc}.",
    "What is {desc}?",
    "Recommend {desc}.",
    "Give me {desc}.",
    "Pull up {desc}.",
    "Hunting for {desc}.",
    "Seek {desc}.",
    "Fetch {desc}.",
    "Locate {desc}.",
    "I'm searching for {desc}.",
    "Help me search for {desc}.",
    "Catalogue search: {desc}.",
    "Top results for {desc}.",
    "Find titles: {desc}.",
    "New here, looking for {desc}.",
]

FAMILIES: dict[str, list[str]] = {"history": HISTORY, "intent": INTENT, "search": SEARCH}

# Requests as people write them (task `conversational`): an intention plus, each optional,
# a sentence of filler, an item the person liked ({title}), a value they rule out ({value})
# and a range of years ({lo}, {hi}). Each part's phrasings are split into training and
# held-out ones like the families above.
CONVERSATION: dict[str, list[str]] = {
    "core": [
        "I'm after {desc}.", "Looking for {desc}.", "Could you find me {desc}?",
        "I want {desc}.", "In the mood for {desc}.", "What about {desc}?",
        "Got {desc} for me?", "Find me {desc}, if you can.", "Ideally {desc}.",
        "Thinking {desc} tonight.", "Maybe {desc}?", "Hoping for {desc}.",
    ],
    "filler": [
        "Long week.", "Hi!", "Okay, so.", "Rainy day here.", "Need to unwind.",
        "Friends are coming over later.", "Hey there.", "Ugh, what a day.",
        "So, here's the thing.", "We've got a couple of hours.", "Help me out here.",
        "Finally some free time.", "Quick question.", "Bit of a weird request maybe.",
    ],
    "like": [
        "Something like {title}.", "I loved {title}.", "Similar to {title} would be great.",
        "More like {title}, please.", "In the vein of {title}.",
        "I enjoyed {title}, something along those lines.", "Kind of like {title}.",
        "I really liked {title}.", "Same vibe as {title}?",
    ],
    "exclude": [
        "No {value} please.", "Nothing {value}.", "Not {value}, though.",
        "Anything but {value}.", "Without {value}, please.", "I'm not into {value}.",
        "Skip anything {value}.", "No {value} this time.", "I can't stand {value}.",
    ],
    "before": [
        "Made before {hi}.", "Older than {hi}, please.", "From before {hi}.",
        "Something pre-{hi}.", "Earlier than {hi}.", "Prior to {hi} ideally.",
    ],
    "after": [
        "From after {lo}.", "Newer than {lo}.", "Released {lo} or later.",
        "Since {lo}, please.", "Later than {lo}.", "Something post-{lo}.",
    ],
    "between": [
        "Between {lo} and {hi}.", "Somewhere from {lo} to {hi}.", "{lo}-{hi} or so.",
        "From {lo} to {hi} ideally.",
    ],
}


def render(template: str, verb: str, past: str, noun: str) -> str:
    """A template with the domain's words in (`{desc}` stays for the generator)."""
    return template.replace("{verb}", verb).replace("{past}", past).replace("{noun}", noun)
