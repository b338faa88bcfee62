"""The path of an alert from detector to destination, in one package.

``dispatch`` takes alerts from the pipeline and hands them to each routed sink; ``routing``
decides which sinks an alert goes to; ``incidents`` folds repeats into one incident; ``spool`` keeps every alert
for a remote sink durable until it is delivered; ``delivered`` remembers which alert ids each
sink already has (part of the checkpoint); ``sinks/`` holds one file per destination.
"""
