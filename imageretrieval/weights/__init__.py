"""Trained models shipped with the package: `<name>/config.json` + `<name>/weights.pt`.

The registry finds them by name (`create_model(name)`); a model of the same name under
`<WORKDIR>/models/` overrides the shipped one. docs/training.md gives the command that trains each.
"""
