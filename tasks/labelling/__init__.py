"""Human preference labelling: a queue of response pairs, a web page to label them, and the labels file."""
