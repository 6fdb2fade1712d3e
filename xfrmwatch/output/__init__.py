"""Outputs: renderers turn events into lines; writers put them somewhere."""
