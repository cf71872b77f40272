"""Build examples/support_tickets.csv: short customer-support messages in 5 classes.

Every phrase below was written for bertcls. Classes share vocabulary on purpose (orders, accounts,
the app, payments) so that the task is not solved by a single keyword. Run:
    python examples/make_support_tickets.py
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

OPENERS = [
    "",
    "Hi, ",
    "Hello team, ",
    "Hey, ",
    "Good morning. ",
    "Quick question: ",
    "Urgent: ",
    "Sorry to bother you, ",
]
CLOSERS = [
    "",
    " Thanks.",
    " Please help.",
    " Any update?",
    " Cheers.",
    " This is frustrating.",
    " Thank you in advance!",
]

CLASSES: dict[str, dict[str, list[str]]] = {
    "billing": {
        "core": [
            "I was charged twice for order {n}",
            "my card was billed after I cancelled the subscription",
            "the invoice for {month} shows the wrong VAT number",
            "why did my monthly plan go up by {m} euros",
            "I need a refund for the duplicate payment",
            "the discount code was not applied at checkout and I paid full price",
            "can you send me a receipt for my last payment",
            "there is a pending charge I do not recognise",
            "my bank says the refund was never issued",
            "please switch my billing from monthly to yearly",
            "the app took money from my account but the order failed",
            "I want to update the credit card on file",
            "you charged me in dollars instead of pounds",
            "the trial should have been free but I was billed {m} euros",
        ],
        "detail": ["", " on {month} {d}", " last week", " for the second time", " even though I paid by PayPal"],
    },
    "shipping": {
        "core": [
            "my parcel for order {n} has not arrived yet",
            "the tracking number shows no movement for {d} days",
            "the courier left the package at the wrong address",
            "the box arrived damaged and the lid was crushed",
            "can I change the delivery address for order {n}",
            "the order says delivered but nothing came",
            "how long does express delivery to Ireland take",
            "only two of the three items were in the package",
            "the delivery driver never rang the bell",
            "is it possible to pick the order up from a locker",
            "my order is stuck in customs",
            "the estimated delivery date keeps moving",
            "I received someone else's parcel",
            "can you ship to a PO box",
        ],
        "detail": ["", " since {month} {d}", " and I need it by Friday", " again", " even though I paid for next-day"],
    },
    "technical": {
        "core": [
            "the app crashes every time I open the settings page",
            "I get error {n} when I try to upload a photo",
            "the website is very slow on my phone",
            "notifications stopped working after the last update",
            "the checkout button does nothing in Firefox",
            "sync between my laptop and tablet is broken",
            "the export to PDF produces an empty file",
            "dark mode makes the text unreadable",
            "the search returns no results even for exact names",
            "the app drains my battery in the background",
            "I cannot connect the device to wifi",
            "the page keeps showing a blank white screen",
            "video playback stutters since version {v}",
            "the payment screen freezes and the app restarts",
        ],
        "detail": [
            "",
            " on Android",
            " on my iPhone",
            " since version {v}",
            " on Windows 11",
            " after I reinstalled it",
        ],
    },
    "account": {
        "core": [
            "I cannot log in even after resetting my password",
            "the password reset email never arrives",
            "please delete my account and all my data",
            "someone changed the email address on my account",
            "how do I enable two-factor authentication",
            "my account was locked after too many attempts",
            "I want to merge my two accounts",
            "can I change my username",
            "the verification code is always rejected",
            "I no longer have access to the phone number on my account",
            "please update my account to use my work email",
            "I think my account was hacked",
            "how do I download a copy of my personal data",
            "the login page says my account does not exist",
        ],
        "detail": ["", " since yesterday", " and I need access today", " on the mobile app", " for the third time"],
    },
    "feedback": {
        "core": [
            "I love the new design, it is much cleaner",
            "it would be great if you added a wishlist",
            "your support agent {name} was very helpful",
            "the new update made the app harder to use",
            "please bring back the old menu layout",
            "delivery was faster than expected, well done",
            "I would like more payment options like Klarna",
            "the packaging uses too much plastic",
            "great product, I will order again",
            "the prices went up too much this year",
            "could you add a dark mode to the website",
            "the recommendations are surprisingly accurate",
            "I wish the app supported Welsh",
            "your checkout is the smoothest I have used",
        ],
        "detail": ["", " honestly", " just saying", " in my opinion", " and my friends agree"],
    },
}

# Terse or vague messages: few cue words, the intent still clear to a person.
SHORT = {
    "billing": [
        "Money taken twice??",
        "Where is my refund",
        "Why was I charged",
        "Overcharged again",
        "Receipt please",
        "Cancel and refund",
        "Wrong amount on invoice",
        "Paid but nothing happened",
    ],
    "shipping": [
        "Where is my stuff",
        "Still waiting",
        "Box came broken",
        "Wrong address on the label",
        "Not here yet",
        "Missing item",
        "Courier lost it",
        "Can it come sooner",
    ],
    "technical": [
        "It won't load",
        "Keeps crashing",
        "Blank screen again",
        "Button broken",
        "Error when saving",
        "Nothing happens when I tap pay",
        "Stuck on the spinner",
        "Upload fails",
    ],
    "account": [
        "Can't get in",
        "Locked out",
        "Reset link expired",
        "Not my email on the profile",
        "Remove my data",
        "Code never comes",
        "Who changed my login",
        "Forgot which email I used",
    ],
    "feedback": [
        "Nice job",
        "Not a fan of the update",
        "Love it",
        "Too expensive now",
        "Add more colours please",
        "Best shop online",
        "The old app was better",
        "Keep it up",
    ],
}

# Context that mentions another topic without changing the intent of the message.
CONTEXT = [
    "I ordered a phone case last week and ",
    "After updating the app, ",
    "When I paid for my order, ",
    "I logged in this morning and ",
    "My parcel finally came, but ",
    "Since I changed my card, ",
    "I wrote to you on the chat and ",
    "Before I leave a review: ",
]

FILLERS = {
    "n": lambda r: str(r.randint(10000, 99999)),
    "m": lambda r: str(r.randint(3, 40)),
    "d": lambda r: str(r.randint(2, 28)),
    "v": lambda r: f"{r.randint(2, 9)}.{r.randint(0, 20)}",
    "month": lambda r: r.choice(["January", "March", "May", "July", "September", "November"]),
    "name": lambda r: r.choice(["Priya", "Tom", "Aisha", "Lukas", "Mei", "Carlos"]),
}


def fill(template: str, rng: random.Random) -> str:
    return template.format(**{key: make(rng) for key, make in FILLERS.items()})


def make_rows(per_class: int = 64, seed: int = 7) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows, seen = [], set()
    for label, parts in CLASSES.items():
        while sum(1 for _, lab in rows if lab == label) < per_class:
            draw = rng.random()
            if draw < 0.2:
                text = rng.choice(SHORT[label]) + rng.choice(["", ".", "!", "?"]) + rng.choice(CLOSERS)
            else:
                body = fill(rng.choice(parts["core"]) + rng.choice(parts["detail"]), rng)
                lead = rng.choice(CONTEXT) if draw < 0.5 else rng.choice(OPENERS)
                body = body if lead.endswith(("and ", "but ", ", ")) else body[0].upper() + body[1:]
                text = lead + body + "." + rng.choice(CLOSERS)
            if text not in seen:
                seen.add(text)
                rows.append((text.strip(), label))
    rng.shuffle(rows)
    return rows


def main() -> None:
    target = Path(__file__).with_name("support_tickets.csv")
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])
        writer.writerows(make_rows())
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
