"""How fast is geomcheck's capture next to the floors and the usual alternatives?

Measured: wall-clock and process CPU time of reading the residual stream (pre/mid/post, every layer, last
token) of the same prompts with the same model and batch size, by: the naive floor (a bare forward over
every token), the unique-token floor (the shared chat-template prefix computed once, then a bare forward
over each prompt's own tokens), geomcheck's capture as the plugin runs it (and with ``prefix_reuse=False``),
Hugging Face ``output_hidden_states`` on the base model and on the CausalLM, and, where installed (see
``--extra-site``), nnsight and TransformerLens; plus the memory of the samples the plugin keeps.

How: one process; one warm-up pass per method, then interleaved rounds (each runs every method once), so a
drift of the machine hits all alike; median, min and max over rounds. Each run also records the share of
the cores that other processes kept busy, since on a shared machine wall-clock times mean little.
The methods' readings are checked against each other: the unique-token floor must reproduce the naive
floor's last hidden state, or the run fails and no README block is written.

nnsight and TransformerLens are not geomcheck dependencies: install them into a separate venv that sees
this one's packages (a ``.pth`` file calling ``site.addsitedir`` on this venv's site-packages), so pip never
touches torch here, and pass its site-packages with ``--extra-site``.
"""
