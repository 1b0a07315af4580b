"""Importers: each translates one source framework's models into :mod:`grurt.spec`, nothing else.

One module (or package) per framework, named after it, holds all of that framework's
conventions (gate order, weight layouts, bias layout, activation formulas, epsilons), each
stated in a table at the top of the module; nothing else in grurt knows them.

* :mod:`~grurt.importers.torch`: live ``torch.nn`` modules (:func:`grurt.from_torch`);
* :mod:`~grurt.importers.keras`: live Keras models and ``.keras``/``.h5`` files;
* :mod:`~grurt.importers.onnx`: ``.onnx`` files;
* :mod:`~grurt.importers.scalers`: fitted scikit-learn scalers folded in as ``Scale`` layers.

Frameworks are imported lazily: importing grurt imports none of them.
"""
