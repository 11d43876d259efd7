"""``zgserve up``: the whole provider stack as separate processes, on a local network or a real one.

Modules, top to bottom:

* :mod:`~zgserve.stack.cli` — the ``up`` command;
* :mod:`~zgserve.stack.local` — the local network bring-up (devnet, model, service, broker,
  the owner's acknowledgement) and the provider-only bring-up for ``--config``;
* :mod:`~zgserve.stack.media` — the media models beside chat (``--embeddings``, ``--speech``,
  ``--image-url``, ``--transcription-url``): a backend and a verifiable service each;
  :mod:`~zgserve.stack.speech_server` is the espeak-ng text-to-speech backend;
* :mod:`~zgserve.stack.demo` — the demo user's journey (its media steps in
  :mod:`~zgserve.stack.demo_media`); :mod:`~zgserve.stack.report` prints it;
* :mod:`~zgserve.stack.processes` — supervised child processes with logs and ordered shutdown;
* :mod:`~zgserve.stack.steps` — progress display of long steps;
* :mod:`~zgserve.stack.provider_config` — the broker YAML written for the local network.

Kept import-light: the CLI imports :mod:`~zgserve.stack.cli` at start-up.
"""
