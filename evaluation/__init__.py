"""`dinoserve eval`: a model package scored as DINO's own evaluation scripts score a backbone.

`knn` is `eval_knn.py` on labelled folders (the service's k-NN vote, exact neighbours); `masks`
is the Jaccard evaluation of the last layer's attention masks against true object masks. Both
take a packaged model through the engine the service uses, so what they score is what is served.
"""
