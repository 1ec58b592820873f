"""The course application: `lmstack run` (pipeline configs, stage wiring), the course's evaluation of a run
and its report card. It sits on top of the library and only calls it."""
