"""English text of the context workload (workload.py): a home-internet support chat and a
product-FAQ retrieval corpus. Slots in {braces} are filled by the generator; each fact
the final question needs is one slot's value in a fixed phrase (``*_FACT``)."""

SYSTEM = (
    "You are the support assistant of Brightline Internet. Be friendly and precise, answer "
    "in the customer's language, and never promise a refund or a technician visit without "
    "checking the ticket first. Prefer step-by-step instructions, one step per line.\n\n"
    "Customer profile: {customer}, account {account}, on the {plan} plan since {since}.")
PLANS = ("Fibre Basic", "Fibre Plus", "Business Plus", "Home Max", "Student Lite")
CUSTOMERS = ("Alex Morgan", "Sam Lee", "Jordan Patel", "Riley Chen", "Casey Novak")
PLAN_FACT = "on the {plan} plan"

OPENING = (
    "Hi, my internet keeps dropping since last week, several times an evening. The router "
    "is a {device}, serial {serial}. The lights go orange for a minute and then come back. "
    "I already restarted it twice.")
OPENING_REPLY = ("I'm sorry to hear that, let's find the cause together. When do the drops "
                 "usually happen?")
DEVICES = ("Brightline HX-5 router", "Brightline HX-7 router", "Brightline Mesh M3")
SERIAL_FACT = "serial {serial}"

# (user, assistant) pairs of the middle of a conversation; {n} is a small number, {t} a time
EXCHANGES = (
    ("Mostly around {t} in the evening, I think, when everyone is home.",
     "Thanks, that helps. Drops at busy hours often point to Wi-Fi congestion rather than the "
     "line itself. Could you tell me how many devices are connected at that time, roughly?"),
    ("About {n} devices I guess: phones, two laptops, the TV and a game console.",
     "That is a normal load for this router. Let's rule out the line first. Please open the "
     "router page at 192.168.1.1, go to Status > Line and tell me the sync rate and the "
     "number of resyncs shown there."),
    ("Here is what the status page shows:\n```\nLine status    Up\nSync rate      "
     "{n}0 Mbit/s\nResyncs (24h)  {n}\nSNR margin     6.1 dB\n```",
     "Thank you. {n} resyncs in a day is more than we like to see, and a 6.1 dB margin is on "
     "the low side. It can be the cable between the wall socket and the router. Do you use "
     "the grey cable that came in the box?"),
    ("Yes it's the grey one. It is quite long though, I have it going under the carpet.",
     "A long or pinched cable can cause exactly this. If you can, try a shorter cable or move "
     "the router closer to the socket for one evening, and note whether the drops continue."),
    ("I moved it closer yesterday and it dropped {n} times anyway.",
     "Thanks for testing that. Then let's check the Wi-Fi side as well. Is the problem on "
     "every device at once, or only on some, for example only on the laptops?"),
    ("All devices at once, even the TV that is on a cable.",
     "Then it is the connection itself and not Wi-Fi, because a wired device would not be "
     "affected by radio interference. I will look at the line tests on our side."),
    ("Can I run some test myself meanwhile? I'm on a Linux laptop.",
     "Yes. Please run this for a few minutes while the connection is up and send me the "
     "summary lines:\n```bash\nping -c 300 -i 0.5 1.1.1.1 | tail -n 3\nip route show default\n```"),
    ("Output:\n```\n300 packets transmitted, 2{n}4 received, {n}% packet loss, time 149.6s\n"
     "rtt min/avg/max/mdev = 8.912/14.203/212.577/19.884 ms\ndefault via 192.168.1.1 dev "
     "wlp2s0 proto dhcp metric 600\n```",
     "The packet loss and the 212 ms maximum confirm short outages. The route is fine. This "
     "pattern matches a line that loses sync, so the next step is a remote line test."),
    ("OK. How long does a remote line test take?",
     "About {n} minutes. Your connection will drop once during the test, so please don't "
     "start a video call in the meantime. I will start it now."),
    ("Started? The lights went orange just now.",
     "Yes, that was the test. It found intermittent noise on the line, which usually comes "
     "from the building wiring or a faulty filter. A technician can measure it on site."),
    ("Is there anything I can do with the filter myself?",
     "If you have a microfilter on the phone socket, try the router without it for a day, or "
     "with a new one. Old filters are a common cause of noise and are cheap to replace."),
    ("I removed the filter, we'll see tonight. By the way my neighbour has the same issue.",
     "Good to know, thank you. Problems in several homes of one building point to the street "
     "cabinet, which we can check from our side. I will add that to the ticket notes."),
)
DOUBLE_PASTE = ("The error on the router page says: WAN link down (code E{n}17), "
                "reconnecting in 30 seconds. It shows this every time it drops.")

TOOL_ASK = "Is a technician visit already booked? I remember the ticket number is {ticket}."
TOOL_NAME = "lookup_ticket"
TOOL_RESULT = '{{"ticket": "{ticket}", "status": "scheduled", "visit": "{visit}", "slot": "8-12"}}'
TOOL_REPLY = ("Yes: ticket {ticket} has a technician visit scheduled on {visit}, between 8 "
              "and 12 in the morning. You will get a text message the day before.")
VISIT_FACT = "{visit}"

CONFIG_ASK = ("A friend said I should change the MTU. This is my WAN config, what should I "
              "change?\n```\ninterface wan0\n  mode       pppoe\n  mtu        1500\n"
              "  keepalive  {n}0\n```")
CONFIG_REPLY = ("For PPPoE the packets are 8 bytes larger, so change the line to `mtu {mtu}` "
                "and keep the rest as it is. Save, then restart the router once.")
MTU_FACT = "mtu {mtu}"

FINAL = ("Thanks. Before I call the technician, can you remind me: what serial number did I "
         "give you, which plan am I on, when is the visit, and which MTU value did you "
         "suggest?")
NOISE_SUFFIXES = ("Thanks!", "Thank you.", "ok", "Let me know.")

RAG_SYSTEM = ("Answer the customer's question using only the passages provided. If the "
              "passages do not contain the answer, say so. Quote numbers exactly.")
PRODUCTS = ("Aurora X2 router", "Nimbus 7 earbuds", "Vela smart lamp", "Orion S5 phone",
            "Kestrel e-bike", "Tidal 3 speaker", "Halo cam mini", "Quill e-reader")
# attribute -> (passage sentence, question phrase, fact phrase, value range)
ATTRIBUTES = {
    "returns": ("The {p} can be returned within {v} days of delivery, provided the original "
                "packaging is kept.", "how many days do I have to return it",
                "within {v} days", (14, 90)),
    "warranty": ("The {p} comes with a {v}-month limited warranty covering manufacturing "
                 "defects.", "how long is the warranty", "a {v}-month limited warranty", (6, 48)),
    "battery": ("On a full charge the {p} lasts about {v} hours of typical use, and the battery "
                "keeps 80% capacity after 500 cycles.", "how many hours does the battery last",
                "about {v} hours", (5, 120)),
    "charging": ("The {p} charges from empty to full in {v} minutes with the bundled adapter.",
                 "how long does it take to charge", "full in {v} minutes", (20, 240)),
    "weight": ("The {p} weighs {v} grams without accessories.", "how much does it weigh",
               "weighs {v} grams", (35, 990)),
    "price": ("The list price of the {p} is {v} dollars, taxes included; prices may differ in "
              "partner stores.", "what is the list price", "is {v} dollars", (29, 899)),
    "shipping": ("Standard shipping of the {p} takes {v} business days; express delivery is "
                 "available in large cities.", "how many business days does shipping take",
                 "takes {v} business days", (2, 15)),
    "updates": ("Firmware updates for the {p} are released every {v} weeks and install "
                "automatically overnight.", "how often are firmware updates released",
                "every {v} weeks", (2, 26)),
}
QUESTION = "About the {p}: {q1}, and {q2}?"
FILLERS = (
    "See the user manual on our website for details.",
    "Contact customer service if anything is unclear.",
    "This information applies to purchases made in our own stores and online shop.",
    "Terms may change; the version valid on the day of purchase applies.",
    "Registered members can find their purchase history in the account page.",
    "Accessories sold separately are covered by their own terms.",
)
