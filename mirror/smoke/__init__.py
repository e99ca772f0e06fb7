"""The inference smoke worker: pull a model through the mirror, verify every byte, load it, ask it a question.

`hub-mirror smoke` (cli.py) runs each check in a fresh child process (worker.py) with HF_ENDPOINT
pointed at the mirror, so the real huggingface_hub and transformers clients read it exactly as a GPU
job would. Nothing here imports torch or transformers at module level: the mirror server and the
parent process never need them.
"""
