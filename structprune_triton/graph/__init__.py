"""Graph analysis shared by chain skipping and ``prune()``: which channels of a layer's input are
provably exact zeros (:mod:`.channels`), the ops that keep zeros zero (:mod:`.zeros`), BatchNorm
masking (:mod:`.norms`) and the shapes ``prune()`` shrinks beyond upstream's patterns (:mod:`.prune`)."""
