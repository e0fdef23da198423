"""The protocol's numeric limits, in a module that imports nothing (mesh.protocol re-exports them;
the CLI reads them while it starts, before anything heavy is imported)."""

#: Framing (mesh.p2p): 4-byte big-endian length + a UTF-8 JSON object of at most this many bytes.
MAX_FRAME = 1024 * 1024
#: Deepest array/object nesting accepted in a frame body.
MAX_DEPTH = 64
#: Longest integer literal accepted in a frame (the largest protocol value, 2^64, has 20 digits).
MAX_INT_DIGITS = 40
#: Largest request frame a provider reads (prompts are at most MAX_PROMPT_BYTES of text).
MAX_REQUEST_FRAME = 256 * 1024
#: Largest manifest request a provider reads, and largest manifest answer a consumer reads.
MAX_MANIFEST_REQUEST_FRAME = 4096
MAX_MANIFEST_FRAME = 64 * 1024
MAX_PROMPT_BYTES = 64 * 1024
MAX_MESSAGES = 64
MAX_TOKENS = 4096
#: llama.cpp reads seed 0xFFFFFFFF as "pick a random seed", which would make a sampled answer
#: unreproducible, so the largest usable seed is one less.
MAX_SEED = 2**32 - 2
MAX_TEMPERATURE_MILLI = 2000
#: Stop sequences a request may give (as OpenAI's API), and the longest one in characters.
MAX_STOPS = 4
MAX_STOP_CHARS = 64
#: Seats of a job: three drawn, up to two added (JobMarket.SEATS).
SEATS = 5
#: Jobs a consumer may have open at once: its slots on-chain (JobMarket.RING).
JOB_SLOTS = 16
#: A job's max tokens on-chain (JobMarket.MAX_TOKENS_LIMIT); a request asks for at most MAX_TOKENS.
MAX_JOB_TOKENS = 2**20
UINT64_MAX = 2**64 - 1

#: The registry keeps prices in 40 bits (ProviderRegistry.Member.price): 1,099,511 MESH per token.
MAX_PRICE = 2**40 - 1
