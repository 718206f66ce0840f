"""Plain descriptions of photos: the text-like queries an index is calibrated on.

CLIP and SigLIP put text queries in another region than image vectors (the modality gap), where IVF recall
is lower than for image-to-image queries, so nprobe and the re-rank depth are tuned on the model's own
embeddings of these phrases as well as on stored vectors. They only need to be text a person might type.
"""

SUBJECTS = (
    "a dog", "a cat", "a horse", "a bird", "a child", "a baby", "an old man", "a woman", "a bride and groom",
    "a group of friends", "a crowd", "a football team", "a musician", "a chef", "a car", "a bicycle", "a train",
    "a sailing boat", "an aeroplane", "a house", "a church", "a bridge", "a skyscraper", "a mountain", "a lake",
    "a waterfall", "a field of flowers", "a tree", "a bowl of fruit", "a birthday cake", "a cup of coffee",
    "a pair of shoes", "a red dress", "a laptop", "a book", "a guitar", "a wedding ring", "a sunset", "a street sign",
    "a painting",
)  # fmt: skip
SCENES = (
    "on a beach", "in the snow", "at night", "in a kitchen", "on a city street", "in a forest", "in the rain",
    "at a party", "in a studio with a white background", "from above", "in black and white", "close up",
)  # fmt: skip

# Each subject in three scenes, spread so every scene appears: 120 phrases, plus the subjects alone.
PROBE_QUERIES = tuple(
    f"{subject} {SCENES[(i + j * 4) % len(SCENES)]}" for i, subject in enumerate(SUBJECTS) for j in range(3)
) + tuple(f"a photo of {subject}" for subject in SUBJECTS)
