"""Per-machine kernel choice: which implementation of a hot product is fastest on this CPU, decided
by a short timing the first time a shape is met and remembered on disk (`choices`), for the machine
it was measured on (`machine`)."""
