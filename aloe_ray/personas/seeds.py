"""Hand-written seed persona pool for the ALOE reproduction (the project's own originals).

A profile holds objective facts only; a personality holds traits and conversational
style only. Both axes are held out: the last `BENCHMARK_PROFILES` profiles x the last
`BENCHMARK_PERSONALITIES` personalities form the seeds' benchmark split (the ALOE benchmark's
100 personas); no held-out profile or personality appears in the seeds' training split or seeds
the persona job's pool.
"""

from __future__ import annotations

SEED_PROFILES: tuple[str, ...] = (
    (
        "She is 34 years old and works as a night-shift nurse in a public hospital in Lagos, "
        "Nigeria. She is married and has two sons aged 6 and 9. She holds a bachelor's degree "
        "in nursing and is studying part-time for a master's in public health. She follows a "
        "mostly pescatarian diet, sings in her church choir on Sundays, and is currently "
        "saving to buy a small car for her commute."
    ),
    (
        "He is 52 and runs a small hardware shop in Curitiba, Brazil, which he inherited from "
        "his father. He is divorced and sees his teenage daughter every other weekend. He "
        "left school at 17 and never went to university. He has type 2 diabetes and is trying "
        "to cut down on sugar. He plays five-a-side football on Thursdays, keeps two parrots, "
        "and is currently renovating the shop's storefront."
    ),
    (
        "She is 27 and is a PhD student in computational biology at a university in "
        "Bangalore, India. She lives in a shared flat with two other students and is single. "
        "She is vegetarian and does not drink alcohol. She plays the veena, practises yoga "
        "most mornings, and has mild asthma. She is currently writing her third thesis "
        "chapter and applying for postdoctoral positions in Europe."
    ),
    (
        "He is 71 and is a retired secondary-school mathematics teacher living in a small "
        "town near Nagano, Japan. He has been a widower for four years and has one adult "
        "daughter in Osaka. He grows vegetables in his backyard, practises calligraphy, and "
        "walks his shiba inu twice a day. He had a knee replacement last year and is "
        "currently learning to use a smartphone to video-call his grandchildren."
    ),
    (
        "They are 31 and work as a software engineer for a logistics startup in Berlin, "
        "Germany. They live with their partner and a rescue cat in a rented apartment in "
        "Kreuzberg. They have a master's degree in computer science, follow a vegan diet, and "
        "go bouldering three times a week. They have ADHD, take daily medication, and are "
        "currently preparing for their German citizenship test."
    ),
    (
        "She is 45 and works as the head chef of a busy seafood restaurant in Veracruz, "
        "Mexico. She is a single mother of a 15-year-old daughter and also cares for her "
        "elderly mother, who lives with them. She trained at a culinary institute after high "
        "school. She has chronic lower-back pain from long shifts, swims on her days off, and "
        "is currently saving to open her own food truck."
    ),
    (
        "He is 38 and works as a welder on oil-sands projects in northern Alberta, Canada, on "
        "a two-weeks-on, two-weeks-off rotation. He is married with three children aged 2, 5 "
        "and 8. He completed a trade apprenticeship after high school. He hunts and "
        "ice-fishes in winter and owns two Labrador retrievers. He is currently training for "
        "his first half-marathon after his doctor warned him about high blood pressure."
    ),
    (
        "She is 23 and works as a barista while finishing a degree in graphic design in Ho "
        "Chi Minh City, Vietnam. She lives with her parents, her grandmother and her younger "
        "brother. She rides a motorbike everywhere, draws webcomics in her spare time, and "
        "keeps a small aquarium of guppies. She is lactose intolerant and is currently "
        "building a portfolio to apply for agency jobs in Singapore."
    ),
    (
        "He is 60 and is a pharmacist who owns a neighbourhood pharmacy in Alexandria, Egypt. "
        "He is married, and his two grown sons both live abroad. He studied pharmacy at "
        "Alexandria University. He has high cholesterol and follows a low-fat diet prescribed "
        "by his cardiologist. He plays backgammon at a local cafe most evenings, fasts during "
        "Ramadan, and is currently planning to hand the business over to a younger partner."
    ),
    (
        "She is 16 and attends secondary school in Krakow, Poland. She lives with her mother, "
        "her stepfather and a half-brother aged 4. She plays the violin in a youth orchestra, "
        "competes in regional chess tournaments, and has a pet rabbit. She is vegetarian and "
        "wears glasses. She is currently studying for an English language certificate exam "
        "while deciding which subjects to take for her final exams."
    ),
    (
        "He is 29 and serves as a sergeant in the Australian Army, stationed in Townsville, "
        "Queensland. He is engaged to his long-term girlfriend, a primary-school teacher, and "
        "they plan to marry next spring. He has a diploma in logistics. He surfs, lifts "
        "weights, and follows a high-protein diet. He is recovering from a shoulder injury "
        "and is currently deciding whether to re-enlist or move into civilian work."
    ),
    (
        "She is 41 and works as a corporate lawyer at a large firm in Seoul, South Korea. She "
        "is married to a civil servant, and they have a 10-year-old son who attends an "
        "after-school academy. She studied law at a national university and passed the bar "
        "exam at 28. She has insomnia and does pilates on weekends. She is currently "
        "considering an in-house legal role with shorter hours."
    ),
    (
        "He is 56 and grows maize and keeps dairy cows on a smallholding outside Nakuru, "
        "Kenya. He is married with five children, two of whom are still in secondary school. "
        "He finished primary school and later took agricultural extension courses. He has "
        "reduced vision in one eye after a cataract and chairs the local farmers' "
        "cooperative. He is currently looking into drip irrigation because of recent "
        "droughts."
    ),
    (
        "She is 67 and lives alone on a cattle ranch in rural Montana, United States, which "
        "she has run since her husband died. She has three adult children in different states "
        "and seven grandchildren. She has a high-school diploma and took bookkeeping classes "
        "at a community college. She rides horses daily, keeps chickens and three barn cats, "
        "has arthritis in her hands, and is currently trying to sell part of her land."
    ),
    (
        "He is 35 and works as a city bus driver in Chicago, United States. He shares an "
        "apartment with his husband, a dental hygienist, and they are in the process of "
        "adopting a child. He earned an associate degree in criminal justice before changing "
        "careers. He bowls in a weekly league, follows a low-carb diet, and uses a CPAP "
        "machine for sleep apnea. He is currently studying to become a route supervisor."
    ),
    (
        "She is 33 and is a stay-at-home mother of three children aged 1, 4 and 7 in a suburb "
        "of Manila, the Philippines. Her husband works on a cargo ship and is away for nine "
        "months at a time. She has a bachelor's degree in accounting and worked at a bank "
        "before her first child was born. She sells baked goods online, is gluten intolerant, "
        "and is currently trying to return to part-time work."
    ),
    (
        "He is 48 and works as a session guitarist and music teacher in Dublin, Ireland. He "
        "is separated from his wife and shares custody of their 12-year-old twin daughters. "
        "He studied at a music conservatory but did not finish his degree. He has tinnitus in "
        "one ear, cycles to every lesson, and keeps a greyhound he adopted from a racing "
        "track. He is currently recording his first solo album."
    ),
    (
        "She is 82 and lives in a retirement home in Lyon, France, having moved out of her "
        "apartment last year. She worked as a librarian for forty years and is widowed. She "
        "has two children, five grandchildren and one great-grandchild. She uses a walker, "
        "has mild hearing loss, and follows a low-salt diet for her heart. She plays bridge, "
        "reads large-print detective novels, and is currently learning to use an e-reader."
    ),
    (
        "He is 24 and works as a delivery rider for a food app in Jakarta, Indonesia, while "
        "studying informatics at an open university in the evenings. He is single and sends "
        "part of his income to his parents in Central Java. He is Muslim and eats only halal "
        "food. He plays mobile esports games, repairs friends' phones for extra money, and is "
        "currently saving to buy a laptop for his coursework."
    ),
    (
        "They are 26 and work as a junior architect at a small studio in Buenos Aires, "
        "Argentina. They are non-binary, live with two roommates and a foster dog, and are in "
        "a relationship with a graphic designer. They graduated in architecture from a public "
        "university. They follow a flexitarian diet, play bandoneon in an amateur tango "
        "orchestra, get frequent migraines, and are currently entering a design competition "
        "for social housing."
    ),
    (
        "She is 39 and works as a secondary-school chemistry teacher in Manchester, United "
        "Kingdom. She is married to her wife, a paramedic, and they have a 3-year-old son. "
        "She has a PhD in chemistry and left academic research to teach. She used to run "
        "10-kilometre races, follows a vegetarian diet, and is pregnant with their second "
        "child. She is currently planning her maternity leave and handing over her exam "
        "classes."
    ),
    (
        "He is 19 and is a first-year mechanical engineering student at a technical "
        "university in Istanbul, Turkey. He grew up in a village near Trabzon and now lives "
        "in a student dormitory. He plays basketball for his faculty team, is learning to "
        "code in Python, and has celiac disease. He holds a government scholarship that "
        "requires good grades, and he is currently preparing for his first calculus final."
    ),
    (
        "She is 58 and owns a small fabric and tailoring shop in Accra, Ghana. She is "
        "divorced and lives with her youngest son, aged 22, who helps run the shop. She "
        "completed secondary school and trained as a seamstress. She has hypertension and "
        "takes daily medication. She sings in a community choir, grows tomatoes and peppers "
        "in containers, and is currently trying to start selling her designs online."
    ),
    (
        "He is 43 and works as a firefighter in Gothenburg, Sweden. He lives with his "
        "long-term partner, to whom he is not married, and her two children from a previous "
        "relationship, aged 11 and 14. He trained at a civil-protection college. He "
        "cross-country skis, brews his own beer, keeps a border collie, and is lactose "
        "intolerant. He is currently preparing for a physical fitness recertification test."
    ),
    (
        "She is 30 and works as a flight attendant for an airline based in Dubai, United Arab "
        "Emirates, though she grew up in Addis Ababa, Ethiopia. She is single, shares a "
        "company apartment with another crew member, and pays her younger sisters' school "
        "fees. She has a diploma in hospitality management. She does pilates, follows a "
        "low-carb diet, sleeps poorly because of jet lag, and is currently studying for a "
        "private pilot licence."
    ),
    (
        "He is 74 and is a retired copper miner living in Antofagasta, Chile. He has been "
        "married for fifty years and is the main carer for his wife, who has early-stage "
        "dementia. He left school at 14. He has reduced lung capacity from years underground "
        "and uses an inhaler. He keeps canaries, plays dominoes with former colleagues, and "
        "is currently arranging home-care support through the local health service."
    ),
    (
        "She is 50 and works as a doctor at a rural health clinic in Chiang Mai province, "
        "Thailand. She is married to a tour guide, and their 17-year-old daughter is "
        "preparing for university entrance exams. She studied medicine in Bangkok. She "
        "meditates daily, follows a mostly plant-based diet, and rides a road bike on "
        "weekends. She is recovering from a broken wrist and is currently helping her "
        "daughter choose a university."
    ),
    (
        "He is 20 and works as an apprentice electrician in Auckland, New Zealand. He lives "
        "with his grandparents, who raised him, and helps them with shopping and medical "
        "appointments. He left school after Year 12. He plays rugby for a club team, fishes "
        "from the wharf on weekends, is allergic to shellfish, and has partial hearing loss "
        "in his left ear. He is currently saving for his first car and studying for his "
        "registration exam."
    ),
    (
        "She is 36 and works as a veterinarian in Cusco, Peru, treating both pets and the "
        "alpacas and llamas of farms in the surrounding valleys. She is married to a potter, "
        "and they have a 3-year-old daughter. She studied veterinary medicine in Lima. She is "
        "allergic to penicillin, hikes in the mountains on Sundays, and knits. She is "
        "currently setting up a mobile clinic that visits remote herding villages."
    ),
    (
        "He is 63 and drives a shared taxi in Casablanca, Morocco, six days a week. He is "
        "married, has four grown children and two grandchildren, and lives in the apartment "
        "where he was born. He left school at 16. He has gout and tries to avoid red meat. He "
        "follows his local football club closely, plays cards at a cafe after work, and is "
        "currently saving for his youngest son's wedding."
    ),
    (
        "She is 28 and works as a customer-support agent on night shifts at a call centre in "
        "Karachi, Pakistan, serving clients in the United States. She lives with her parents "
        "and three younger siblings. She holds a bachelor's degree in commerce. She has "
        "iron-deficiency anaemia and takes supplements. She plays cricket with her cousins, "
        "embroiders cushions, and is currently taking driving lessons."
    ),
    (
        "He is 47 and is a police officer in the traffic division in Naples, Italy. He is in "
        "his second marriage and lives with his wife, her 19-year-old son and their 8-year-old "
        "daughter. He completed a technical high school diploma before joining the force. He "
        "has high blood pressure, restores old Vespa scooters, and makes his own limoncello. "
        "He is currently studying for a promotion exam."
    ),
    (
        "She is 54 and works as a child-protection social worker for the city council in "
        "Glasgow, Scotland. She is divorced, has a 25-year-old son who lives in London, and "
        "shares her flat with her partner. She has a degree in social work. She has type 1 "
        "diabetes and uses an insulin pump. She swims in a loch all year round and is "
        "currently retraining part-time as a counsellor."
    ),
    (
        "He is 32 and is a freelance wedding and event photographer in Kingston, Jamaica. He "
        "is a single father of a 6-year-old son, and his mother helps with childcare. He took "
        "a diploma in media production at a community college. He has a peanut allergy, "
        "plays dominoes with friends on Fridays, and keeps a vegetable garden on his roof. He "
        "is currently trying to get his photographs into a gallery exhibition."
    ),
    (
        "She is 21 and studies sports science at a university in Amsterdam, the Netherlands, "
        "while rowing competitively for her university club. She shares a houseboat with "
        "three other students and is in a long-distance relationship. She trains twice a day, "
        "follows a high-calorie diet, and is recovering from a rib stress fracture. She is "
        "currently trying to qualify for the national under-23 team."
    ),
    (
        "He is 40 and drives a long-haul truck between Almaty, Kazakhstan, and cities in "
        "China and Russia, often spending two weeks on the road. He is married with two "
        "daughters aged 10 and 13. He did compulsory military service and then trained as a "
        "mechanic. He has chronic back pain and a sedentary routine, plays chess on his "
        "phone, and is currently thinking about buying his own truck."
    ),
    (
        "She is 69 and is a retired postal worker living in Tbilisi, Georgia. She has been "
        "married for forty-five years, and she and her husband share their house with their "
        "son, his wife and two grandchildren. She finished a vocational college. She has "
        "glaucoma and uses eye drops daily. She bakes bread for the neighbours, sings in a "
        "polyphonic folk choir, and is currently writing down her family's recipes."
    ),
    (
        "He is 26 and works remotely as a freelance translator between Korean, Nepali and "
        "English from Kathmandu, Nepal. He lives with his older brother's family and is "
        "single. He learned Korean while working in a factory in South Korea for four years. "
        "He has a stammer, plays the flute, and goes trekking when he can. He is currently "
        "applying for a master's degree in linguistics."
    ),
    (
        "She is 45 and runs a family guesthouse with twelve rooms on the island of Crete, "
        "Greece, together with her husband and her father-in-law. She has twin sons aged 17 "
        "who help in the summer season. She studied tourism management in Athens. She has "
        "hypothyroidism, grows olives and herbs, and dances in a local folk group. She is "
        "currently planning to keep the guesthouse open through the winter."
    ),
    (
        "He is 58 and operates a container crane at the port of Durban, South Africa, on "
        "rotating twelve-hour shifts. He is a widower with three adult children and lives "
        "with his youngest daughter. He finished high school and was trained on the job. He "
        "has hearing loss from the port noise, coaches a youth boxing club on weekends, and "
        "is currently planning his early retirement."
    ),
)

SEED_PERSONALITIES: tuple[str, ...] = (
    (
        "They are blunt and value efficiency above everything else. They get straight to "
        "the point, want the key recommendation first, and skip greetings and small talk "
        "entirely. They get impatient with hedging, long disclaimers and repeated "
        "caveats. They rarely say thank you, ask for exactly what they need, and expect the "
        "same directness back. If an answer runs long, they say so immediately."
    ),
    (
        "They are anxious and tend to imagine worst-case outcomes. They want gentle "
        "reassurance before getting into practical details, and they often ask the same "
        "question twice in different words to make sure they understood. They appreciate a "
        "calm, warm tone and step-by-step plans that feel manageable. They apologise for "
        "asking 'silly' questions, feel overwhelmed by too many options at once, and are "
        "comforted when told what is normal."
    ),
    (
        "They are skeptical and analytical. They distrust claims that come without evidence "
        "and routinely ask for sources, numbers or the reasoning behind a recommendation. "
        "They enjoy debate and push back when something sounds oversimplified. They prefer "
        "precise, neutral language and dislike emotional appeals or marketing-style "
        "enthusiasm. They value it when uncertainty is admitted openly, and they like "
        "trade-offs between options laid out clearly."
    ),
    (
        "They are emotional and expressive, and they write long messages full of exclamation "
        "marks and emoji. They like to share how they feel about a situation before asking "
        "for anything, and they want those feelings acknowledged. They enjoy warm, "
        "enthusiastic replies and feel let down by cold or purely technical answers. They "
        "often wander off on tangents, laugh at their own jokes, and thank people effusively."
    ),
    (
        "They are formal and polite, and they write in complete sentences with proper "
        "punctuation and courteous phrasing. They expect the same respect in return and find "
        "slang or overly casual language off-putting. They like things explained in an orderly, "
        "well-reasoned way. They are patient and reserved, rarely share personal feelings, and "
        "appreciate thoroughness as long as the tone remains professional and precise."
    ),
    (
        "They use humour constantly and like conversations to feel playful. They tease, make "
        "puns, and enjoy it when the other side plays along with a light joke or a witty "
        "remark. They get bored quickly by dry, textbook-style explanations. They are relaxed "
        "and optimistic, rarely take problems too seriously, and prefer quick conversational "
        "replies over long formal ones, while still wanting the facts underneath the "
        "banter to be right."
    ),
    (
        "They write short lowercase messages with little punctuation and often send several "
        "fragments in a row instead of one full question. They are casual and laid-back and "
        "want replies that match: brief, plain and informal. They dislike walls of text and "
        "stiff phrasing, use internet slang freely, and lose interest when an answer drags "
        "on. They shrug off small mistakes but expect quick, practical help."
    ),
    (
        "They are intensely curious and treat every conversation as a chance to learn "
        "something. They ask many follow-up questions, want to know why things work and not "
        "just what to do, and enjoy detours into history or background. They like "
        "explanations that build understanding step by step and appreciate good analogies. "
        "They are open-minded, excited by new ideas, and happy to read long answers when the "
        "content is interesting."
    ),
    (
        "They think in stories and examples rather than abstract rules. They understand "
        "advice best when it is framed as a scenario or an anecdote about someone in a "
        "similar situation. They are reflective and imaginative, like a warm narrative tone, "
        "and find terse, clinical language cold and impersonal. They take their time reading, enjoy "
        "vivid descriptions, and tend to reply with stories of their own."
    ),
    (
        "They are fiercely independent and strongly dislike being lectured or told what they "
        "should do. They want options and information, not moral judgements or unsolicited "
        "warnings. They get irritated by preachy or patronising tones and by repeated safety "
        "reminders. They are confident in their own decisions, want to be treated as a "
        "capable adult, and respond best to a frank, peer-to-peer style of conversation."
    ),
    (
        "They are indecisive and easily torn between options. They want a clear "
        "recommendation rather than a balanced overview, and they feel frustrated by answers that "
        "boil down to 'it depends'. They ask for opinions directly, appreciate confident "
        "guidance, and like hearing the bottom line once more before they decide. They are friendly and chatty, often "
        "second-guess themselves, and value being gently nudged toward a decision."
    ),
    (
        "They are meticulous and detail-oriented, and they notice small errors or "
        "inconsistencies immediately. They want complete answers that cover edge cases, and "
        "they would rather read a long response than miss something. They like exact "
        "quantities, precise terminology and a clear order of things. They are cautious, plan far ahead, "
        "point out mistakes without hesitation, and feel uneasy when instructions are vague "
        "or left to judgement."
    ),
    (
        "They are dry, sarcastic and somewhat cynical, especially about advice that sounds "
        "too good to be true. They roll their eyes at cheerful motivational language and "
        "generic tips. They prefer honest, realistic assessments, even when the news is bad. "
        "They are introverted, reveal little about themselves, and reply with short, wry "
        "comments. They appreciate answers that are straightforward and understated and that "
        "never oversell anything."
    ),
    (
        "They are warm, chatty and sociable, and they enjoy small talk before getting to the "
        "point. They like being asked how they are doing and appreciate a friendly, personal "
        "tone that feels like talking with a neighbour. They are encouraging towards others, "
        "open about their plans, and enjoy cheerful, upbeat replies. They prefer gentle "
        "suggestions over direct instructions and like conversations to end on a kind note."
    ),
    (
        "They are competitive and goal-driven, and they treat most problems as a challenge to "
        "win. They want measurable targets, deadlines and a way to track progress, and they "
        "like being pushed rather than comforted. They find vague encouragement useless and "
        "ask what the best people do differently. They are energetic, keep score of their "
        "own results, and respond well to a demanding, coach-like tone."
    ),
    (
        "They are shy and reticent, and they reveal very little about themselves unless "
        "asked. Their messages are short and tentative, often ending with 'maybe' or 'not "
        "sure'. They feel uncomfortable with personal questions asked too directly and "
        "prefer being offered a few simple choices. They appreciate patience, a soft and "
        "unhurried tone, and answers that do not put them on the spot."
    ),
    (
        "They are hands-on and learn by doing rather than by reading. They want the first "
        "concrete step right away, try it, and come back with what happened. Theory and "
        "background bore them unless something goes wrong. They like practical tips, "
        "shortcuts and rules of thumb, trust their own trial and error, and get restless "
        "when an answer explains everything before saying what to do."
    ),
    (
        "They are traditional and cautious about anything new. They trust established "
        "methods, official guidance and experts with long experience, and they distrust "
        "trends and fashionable advice. They speak respectfully and expect courtesy in "
        "return. They often compare new suggestions with how things were done before, take "
        "their time to decide, and prefer one proven option to many novel ones."
    ),
    (
        "They are idealistic and guided by strong principles. They care about fairness, the "
        "environment and how their choices affect other people, and they ask about those "
        "effects even for everyday decisions. They dislike advice that treats money or "
        "convenience as the only thing that matters. They are earnest, thoughtful and "
        "sincere, and they appreciate replies that take their values seriously."
    ),
    (
        "They are easily distracted and jump between topics, sometimes in the middle of a "
        "sentence. They forget details they mentioned earlier and are grateful for brief "
        "reminders and recaps. They prefer information in small chunks, one thing at a "
        "time, and lose track of long explanations. They are enthusiastic, spontaneous and "
        "good-natured, and they laugh at their own scattered habits."
    ),
)


BENCHMARK_PROFILES = 20
"""The last this-many seed profiles are held out: only the benchmark split pairs them."""

BENCHMARK_PERSONALITIES = 5
"""The last this-many seed personalities are held out: only the benchmark split pairs them. With
`BENCHMARK_PROFILES` they make the ALOE benchmark's shape, 20 profiles x 5 personalities = 100
personas held out on both axes."""
